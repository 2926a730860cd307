# Applied to every Moat target through moat_warnings().
add_library(moat_warnings INTERFACE)
target_compile_options(moat_warnings INTERFACE -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
                                               -Wold-style-cast -Wcast-align -Woverloaded-virtual)
if(MOAT_WERROR)
  target_compile_options(moat_warnings INTERFACE -Werror)
endif()
