# One sanitizer configuration per build directory (see .ci/run).
if(MOAT_SANITIZE STREQUAL "address")
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
elseif(MOAT_SANITIZE STREQUAL "thread")
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  # TSan does not model std::atomic_thread_fence (GCC warns, -Wtsan). Asio's fenced
  # blocks only add ordering that the scheduler's mutex already gives, so they are
  # compiled out here rather than hidden from the race detector.
  add_compile_definitions(BOOST_ASIO_DISABLE_FENCED_BLOCK)
  add_link_options(-fsanitize=thread)
elseif(NOT MOAT_SANITIZE STREQUAL "")
  message(FATAL_ERROR "MOAT_SANITIZE must be '', 'address' or 'thread', not '${MOAT_SANITIZE}'")
endif()
