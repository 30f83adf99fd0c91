// The artifact files of durable jobs: atomic writes (temporary file, fsync,
// rename, directory fsync) with POSIX calls, lookups and removal with
// std::filesystem's error_code overloads; nothing here throws.
#include "persistence/artifacts.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include "messages/errors.hpp"
#include "messages/job.hpp"

namespace infergrid::persistence {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t max_name_length = 128;

/// Attempts at a fresh temporary name before giving up (a name can only be
/// taken by a file a crashed process with the same pid left behind).
constexpr int max_temp_attempts = 16;

/// Tells the temporary files of one process apart.
std::atomic<uint64_t> temp_counter{0};

/// `name` for an error message, cut to a readable length.
std::string shown(const std::string& name) {
  if (name.size() <= max_name_length)
    return name;
  return name.substr(0, max_name_length) + "...";
}

caf::error io_error(const std::string& what, const std::string& path, int err) {
  return make_error(errc::storage_error, what + " " + path + ": " + std::strerror(err));
}

caf::error io_error(const std::string& what, const std::string& path,
                    const std::error_code& ec) {
  return make_error(errc::storage_error, what + " " + path + ": " + ec.message());
}

caf::error invalid_job_id(int64_t job_id) {
  return make_error(errc::invalid_input,
                    "artifact: job id must be positive, not " + std::to_string(job_id));
}

caf::error no_artifact(int64_t job_id, const std::string& name) {
  return make_error(errc::not_found,
                    "no artifact '" + shown(name) + "' for job " + job_id_string(job_id));
}

/// fsync of a directory, so that the entries just created or renamed in it
/// survive a power loss; 0 or errno. Filesystems that cannot sync a
/// directory (EINVAL) count as done.
int sync_dir(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return errno;
  int rc = ::fsync(fd) == 0 || errno == EINVAL ? 0 : errno;
  ::close(fd);
  return rc;
}

/// Writes all of `bytes` to `fd`; 0 or errno.
int write_all(int fd, std::string_view bytes) {
  const char* ptr = bytes.data();
  std::size_t left = bytes.size();
  while (left > 0) {
    auto n = ::write(fd, ptr, left);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return errno;
    }
    ptr += n;
    left -= static_cast<std::size_t>(n);
  }
  return 0;
}

/// The directory that holds `root`, for syncing a newly created root.
std::string parent_of(const std::string& root) {
  auto path = fs::path{root}.lexically_normal();
  if (!path.has_filename())
    path = path.parent_path();
  auto parent = path.parent_path();
  return parent.empty() ? std::string{"."} : parent.string();
}

} // namespace

artifact_store::artifact_store(std::string root) : root_(std::move(root)) {}

bool artifact_store::valid_name(const std::string& name) {
  if (name.empty() || name.size() > max_name_length || name.front() == '.')
    return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
           || c == '.' || c == '_' || c == '-';
  });
}

const std::string& artifact_store::root() const {
  return root_;
}

std::string artifact_store::job_dir(int64_t job_id) const {
  return (fs::path{root_} / job_id_string(job_id)).string();
}

caf::expected<std::string> artifact_store::write(int64_t job_id, const std::string& name,
                                                 std::string_view bytes) {
  if (job_id <= 0)
    return invalid_job_id(job_id);
  if (!valid_name(name))
    return make_error(errc::invalid_input,
                      "invalid artifact name '" + shown(name)
                          + "': 1..128 characters of [A-Za-z0-9._-], not starting "
                            "with '.'");
  auto dir = job_dir(job_id);
  auto path = (fs::path{dir} / name).string();
  std::error_code ec;
  bool root_existed = fs::is_directory(root_, ec);
  if (fs::create_directories(dir, ec)) {
    // New directories must survive a power loss too: sync their parents.
    if (!root_existed)
      if (int err = sync_dir(parent_of(root_)); err != 0)
        return io_error("write: cannot sync the parent of", root_, err);
    if (int err = sync_dir(root_); err != 0)
      return io_error("write: cannot sync", root_, err);
  } else if (ec) {
    return io_error("write: cannot create", dir, ec);
  }
  // A hidden name (valid names never start with '.'), unique per process
  // and write; O_EXCL never reuses a file someone else left.
  std::string temp;
  int fd = -1;
  for (int attempt = 0; fd < 0 && attempt < max_temp_attempts; ++attempt) {
    temp = (fs::path{dir}
            / ("." + name + ".tmp." + std::to_string(::getpid()) + "."
               + std::to_string(temp_counter.fetch_add(1, std::memory_order_relaxed))))
               .string();
    fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno != EEXIST)
      break;
  }
  if (fd < 0)
    return io_error("write: cannot create", temp, errno);
  // From here on every failure removes the temporary file.
  auto fail = [&](const std::string& what, int err) {
    if (fd >= 0)
      ::close(fd);
    ::unlink(temp.c_str());
    return io_error(what, path, err);
  };
  if (int err = write_all(fd, bytes); err != 0)
    return fail("write", err);
  if (::fsync(fd) != 0)
    return fail("write: fsync of", errno);
  int closed = ::close(fd);
  fd = -1;
  if (closed != 0)
    return fail("write: close of", errno);
  if (::rename(temp.c_str(), path.c_str()) != 0)
    return fail("write: rename to", errno);
  // The rename is done; only its durability is in question now.
  if (int err = sync_dir(dir); err != 0)
    return io_error("write: cannot sync", dir, err);
  return path;
}

caf::expected<artifact_file> artifact_store::find(int64_t job_id,
                                                  const std::string& name) const {
  if (job_id <= 0 || !valid_name(name))
    return no_artifact(job_id, name);
  auto path = (fs::path{job_dir(job_id)} / name).string();
  std::error_code ec;
  // Not following links: write() only ever creates regular files.
  auto st = fs::symlink_status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory
      && ec != std::errc::not_a_directory)
    return io_error("find", path, ec);
  if (ec || !fs::is_regular_file(st))
    return no_artifact(job_id, name);
  auto size = fs::file_size(path, ec);
  if (ec) {
    if (ec == std::errc::no_such_file_or_directory)
      return no_artifact(job_id, name); // removed meanwhile
    return io_error("find", path, ec);
  }
  return artifact_file{path, static_cast<int64_t>(size)};
}

std::vector<std::string> artifact_store::list(int64_t job_id) const {
  std::vector<std::string> result;
  if (job_id <= 0)
    return result;
  auto dir = job_dir(job_id);
  std::error_code ec;
  fs::directory_iterator it{dir, ec};
  for (fs::directory_iterator end; !ec && it != end; it.increment(ec)) {
    auto name = it->path().filename().string();
    std::error_code st_ec;
    if (valid_name(name) && it->is_regular_file(st_ec) && !it->is_symlink(st_ec))
      result.push_back(std::move(name));
  }
  if (ec && ec != std::errc::no_such_file_or_directory)
    spdlog::warn("artifacts: cannot list {}: {}", dir, ec.message());
  std::sort(result.begin(), result.end());
  return result;
}

caf::expected<int64_t> artifact_store::remove_job(int64_t job_id) {
  if (job_id <= 0)
    return invalid_job_id(job_id);
  auto dir = job_dir(job_id);
  std::error_code ec;
  auto st = fs::symlink_status(dir, ec);
  if (ec == std::errc::no_such_file_or_directory || (!ec && !fs::exists(st)))
    return int64_t{0};
  if (ec)
    return io_error("remove", dir, ec);
  int64_t freed = 0;
  if (fs::is_directory(st)) {
    // Links are not followed: only what lies in the directory counts.
    fs::recursive_directory_iterator it{dir, ec};
    for (fs::recursive_directory_iterator end; !ec && it != end; it.increment(ec)) {
      std::error_code file_ec;
      if (it->is_symlink(file_ec) || !it->is_regular_file(file_ec))
        continue;
      auto size = it->file_size(file_ec);
      if (!file_ec)
        freed += static_cast<int64_t>(size);
    }
    if (ec)
      return io_error("remove", dir, ec);
  }
  fs::remove_all(dir, ec);
  if (ec)
    return io_error("remove", dir, ec);
  return freed;
}

} // namespace infergrid::persistence
