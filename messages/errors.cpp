// Names and classification of infergrid error codes.
#include "messages/errors.hpp"

#include <array>
#include <utility>

#include <caf/message.hpp>
#include <caf/sec.hpp>

namespace infergrid {

namespace {

constexpr std::array<std::pair<errc, const char*>, 15> names{{
  {errc::invalid_input, "invalid_input"},
  {errc::unauthorized, "unauthorized"},
  {errc::forbidden, "forbidden"},
  {errc::not_found, "not_found"},
  {errc::conflict, "conflict"},
  {errc::payload_too_large, "payload_too_large"},
  {errc::queue_full, "queue_full"},
  {errc::unavailable, "unavailable"},
  {errc::timeout, "timeout"},
  {errc::internal, "internal"},
  {errc::oom, "oom"},
  {errc::worker_lost, "worker_lost"},
  {errc::lease_lost, "lease_lost"},
  {errc::model_error, "model_error"},
  {errc::storage_error, "storage_error"},
}};

} // namespace

std::string to_string(errc x) {
  for (auto& [code, name] : names)
    if (code == x)
      return name;
  return "internal";
}

bool from_string(const std::string& name, errc& out) {
  for (auto& [code, text] : names) {
    if (name == text) {
      out = code;
      return true;
    }
  }
  return false;
}

bool is_retryable(errc x) {
  switch (x) {
    case errc::queue_full:
    case errc::unavailable:
    case errc::timeout:
    case errc::oom:
    case errc::worker_lost:
    case errc::storage_error:
      return true;
    default:
      return false;
  }
}

errc code_of(const caf::error& err) {
  if (!err)
    return errc::internal;
  if (err.category() == error_category)
    return static_cast<errc>(err.code());
  if (err.category() == caf::atom("system")) {
    switch (static_cast<caf::sec>(err.code())) {
      case caf::sec::request_timeout:
        return errc::timeout;
      case caf::sec::request_receiver_down:
        return errc::unavailable;
      default:
        break;
    }
  }
  return errc::internal;
}

std::string message_of(const caf::error& err) {
  if (!err)
    return {};
  auto& ctx = err.context();
  if (err.category() == error_category && ctx.match_elements<std::string>())
    return ctx.get_as<std::string>(0);
  return caf::to_string(err);
}

} // namespace infergrid
