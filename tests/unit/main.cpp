// The CAF test engine and main() for every unit-test binary.
#include <caf/test/unit_test_impl.hpp>
