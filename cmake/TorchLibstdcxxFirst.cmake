# Included after find_package(Torch): works around LibTorch builds that export
# libstdc++'s std::filesystem (see the comment below and docs/gpu.md).
# PyTorch's pip wheels (and LibTorch archives built alike) export their own
# copies of libstdc++'s std::filesystem from libtorch_cpu.so (pytorch#133437).
# The dynamic linker binds to the first definition in load order, so code built
# against the system's libstdc++ ran torch's copies: std::filesystem::remove_all
# crashed with torch 2.11.0+cu130 (docs/gpu.md). Making libstdc++ the first
# DT_NEEDED of every executable keeps the system's definitions. Debian's
# libtorch exports none, so its build is unchanged.
find_library(INFERGRID_TORCH_CPU_LIBRARY torch_cpu
             PATHS "${TORCH_INSTALL_PREFIX}/lib" NO_DEFAULT_PATH)
if(INFERGRID_TORCH_CPU_LIBRARY AND CMAKE_NM)
  execute_process(COMMAND "${CMAKE_NM}" -D --defined-only "${INFERGRID_TORCH_CPU_LIBRARY}"
                  COMMAND grep -c "_ZNSt10filesystem"
                  OUTPUT_VARIABLE _infergrid_fs_symbols
                  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(_infergrid_fs_symbols GREATER 0)
    # By path: a relocated g++ (the H100 image's /opt/gcc) moved a plain
    # -lstdc++ behind the other libraries. The compiler's own libstdc++ first,
    # else the system's.
    execute_process(COMMAND "${CMAKE_CXX_COMPILER}" -print-file-name=libstdc++.so
                    OUTPUT_VARIABLE _infergrid_stdcxx
                    OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(NOT IS_ABSOLUTE "${_infergrid_stdcxx}" OR NOT EXISTS "${_infergrid_stdcxx}")
      find_library(INFERGRID_LIBSTDCXX NAMES libstdc++.so.6 stdc++)
      set(_infergrid_stdcxx "${INFERGRID_LIBSTDCXX}")
    endif()
    if(NOT _infergrid_stdcxx)
      message(FATAL_ERROR "infergrid: cannot find libstdc++.so to link first; "
                          "set INFERGRID_LIBSTDCXX to its path")
    endif()
    add_link_options("SHELL:-Wl,--push-state,--no-as-needed ${_infergrid_stdcxx} -Wl,--pop-state")
    message(STATUS "infergrid: libtorch_cpu.so exports ${_infergrid_fs_symbols} "
                   "std::filesystem symbols; executables link ${_infergrid_stdcxx} first")
  endif()
endif()
