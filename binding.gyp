# The wina addon. Kernel sources come from native/kernel-sources.txt (shared with CMakeLists.txt):
# files named *_avx2.cc / *_avx512.cc build in their own static libraries with that ISA's flags,
# the rest build into the addon with no -m flag. Dispatch at run time picks the table the CPU and
# OS support (native/dispatch.cc), so one binary serves every x86-64 machine.
{
  'variables': {
    'kernel_list': "require('fs').readFileSync('native/kernel-sources.txt','utf8').split('\\n').map(l=>l.trim()).filter(l=>l&&l[0]!='#')",
    'avx2_flags': ['-mavx2', '-mfma', '-mf16c', '-mpopcnt'],
    'avx512_flags': ['-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq', '-mavx2', '-mfma', '-mf16c', '-mpopcnt',
                     # GCC 12 reports false uninitialised values inside its own AVX-512 intrinsics headers
                     '-Wno-uninitialized', '-Wno-maybe-uninitialized'],
  },
  'target_defaults': {
    'cflags_cc': ['-O3', '-std=c++17', '-fPIC'],
    'xcode_settings': {
      'CLANG_CXX_LANGUAGE_STANDARD': 'c++17',
      'GCC_OPTIMIZATION_LEVEL': '3',
    },
  },
  'targets': [
    {
      'target_name': 'wina_kernels_avx2',
      'type': 'static_library',
      'sources': ["<!@(node -p \"<(kernel_list).filter(l=>l.endsWith('_avx2.cc')).join(' ')\")"],
      'conditions': [
        ['target_arch=="x64"', {
          'cflags_cc': ['<@(avx2_flags)'],
          'xcode_settings': {'OTHER_CPLUSPLUSFLAGS': ['<@(avx2_flags)']},
        }],
      ],
    },
    {
      'target_name': 'wina_kernels_avx512',
      'type': 'static_library',
      'sources': ["<!@(node -p \"<(kernel_list).filter(l=>l.endsWith('_avx512.cc')).join(' ')\")"],
      'conditions': [
        ['target_arch=="x64"', {
          'cflags_cc': ['<@(avx512_flags)'],
          'xcode_settings': {'OTHER_CPLUSPLUSFLAGS': ['<@(avx512_flags)']},
        }],
      ],
    },
    {
      'target_name': 'wina',
      'sources': [
        'native/addon.cc',
        'native/model.cc',
        "<!@(node -p \"<(kernel_list).filter(l=>!l.endsWith('_avx2.cc')&&!l.endsWith('_avx512.cc')).join(' ')\")",
      ],
      'dependencies': [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except",
        'wina_kernels_avx2',
        'wina_kernels_avx512',
      ],
      'defines': ['NAPI_VERSION=8', 'NODE_ADDON_API_DISABLE_DEPRECATED'],
      'cflags_cc': ['-pthread'],
      'ldflags': ['-pthread'],
    },
  ],
}
