// Files that durable jobs produce, one directory per job:
// <root>/j_<id>/<name>. Plain files, no SQLite; every call is blocking POSIX
// I/O in the caller's thread (keep it off actors that must not block).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <caf/expected.hpp>

namespace infergrid::persistence {

/// A stored artifact: its path and size in bytes.
struct artifact_file {
  std::string path;
  int64_t size = 0;
};

/// The artifacts directory. Holds no state but its root, so several threads
/// and processes may use one root at once: writes are atomic renames, the
/// last writer of a name wins, a reader sees a whole file or none. Job ids
/// must be positive.
class artifact_store {
public:
  /// root: the artifacts directory, e.g. "<data_dir>/artifacts" (created,
  /// with its parents, on the first write).
  explicit artifact_store(std::string root);

  /// 1..128 chars of [A-Za-z0-9._-], not starting with '.', so a name can
  /// never escape the job's directory (no '/', no "." or "..") nor collide
  /// with the hidden temporary files of write().
  static bool valid_name(const std::string& name);

  /// Writes atomically: a temporary file in the same directory, fsync,
  /// rename over `name`, fsync of the directory; returns the final path.
  /// errc::invalid_input for a bad name or job id; errc::storage_error
  /// (naming the path and strerror) on I/O failure, leaving no temporary
  /// file and any earlier version of the artifact intact.
  caf::expected<std::string> write(int64_t job_id, const std::string& name,
                                   std::string_view bytes);

  /// errc::not_found "no artifact 'x' for job j_N" when absent or the name
  /// is invalid; errc::storage_error when it cannot be examined.
  caf::expected<artifact_file> find(int64_t job_id, const std::string& name) const;

  /// Names of a job's artifacts, sorted; empty when none (also when the
  /// directory cannot be read, which is logged). Temporary files of writes
  /// in progress are not artifacts and never listed.
  std::vector<std::string> list(int64_t job_id) const;

  /// Removes a job's directory with everything in it (for the future cleanup
  /// actor); returns the bytes of the regular files freed, 0 when there was
  /// none. errc::storage_error when it cannot be removed.
  caf::expected<int64_t> remove_job(int64_t job_id);

  const std::string& root() const;

private:
  /// <root>/j_<id>
  std::string job_dir(int64_t job_id) const;

  std::string root_;
};

} // namespace infergrid::persistence
