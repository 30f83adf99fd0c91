// Compiles Beast and Asio once for the whole project (separate compilation:
// BOOST_BEAST_SEPARATE_COMPILATION / BOOST_ASIO_SEPARATE_COMPILATION).
#include <boost/asio/impl/src.hpp>

// GCC 12 with -fsanitize=address reports a false -Wmaybe-uninitialized in
// Beast's parser (a boost::optional it reads only when set).
#if defined(__GNUC__) && !defined(__clang__)
#  pragma GCC diagnostic push
#  pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <boost/beast/src.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#  pragma GCC diagnostic pop
#endif
