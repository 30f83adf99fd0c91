// artifact_store on real files in a temp dir: round trip, overwrite, name
// checks, not_found, listing, removal, I/O failures and that no temporary
// file is ever left behind.
#define CAF_SUITE artifacts
#include "tests/unit/test_support.hpp"

#include "persistence/artifacts.hpp"

#include <caf/test/unit_test.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "messages/errors.hpp"

using namespace infergrid;
using namespace infergrid::persistence;

namespace fs = std::filesystem;

namespace {

template <class T>
T value_of(caf::expected<T> x, const std::string& what) {
  if (!x)
    CAF_FAIL(what << " failed: " << message_of(x.error()));
  return std::move(*x);
}

std::string slurp(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  return {std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
}

/// Every entry under `dir`, recursively, relative to it, sorted (hidden
/// temporary files included).
std::vector<std::string> tree(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::recursive_directory_iterator it{dir, ec}, end; !ec && it != end;
       it.increment(ec))
    out.push_back(fs::relative(it->path(), dir).string());
  std::sort(out.begin(), out.end());
  return out;
}

/// `name` with bytes outside printable ASCII as \xNN, for test messages.
std::string printable(const std::string& name) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : name) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xf];
    }
  }
  return out;
}

struct fixture {
  testing::temp_dir dir;
  std::string root = dir.str("data/artifacts");
  artifact_store store{root};

  std::string write(int64_t job, const std::string& name, std::string_view bytes) {
    return value_of(store.write(job, name, bytes), "write " + name);
  }
};

} // namespace

CAF_TEST_FIXTURE_SCOPE(artifacts_tests, fixture)

CAF_TEST(a written artifact reads back byte for byte) {
  CAF_CHECK_EQUAL(store.root(), root);
  CAF_CHECK(!fs::exists(root)); // created on the first write
  std::string bytes{"RIFF\0\x01\xff binary", 15};
  auto path = write(7, "out.wav", bytes);
  CAF_CHECK_EQUAL(path, root + "/j_7/out.wav");
  CAF_CHECK_EQUAL(slurp(path), bytes);
  auto found = value_of(store.find(7, "out.wav"), "find");
  CAF_CHECK_EQUAL(found.path, path);
  CAF_CHECK_EQUAL(found.size, 15);
  CAF_CHECK_EQUAL(store.list(7), std::vector<std::string>{"out.wav"});
  // An empty artifact is an artifact.
  write(7, "empty", "");
  CAF_CHECK_EQUAL(value_of(store.find(7, "empty"), "find").size, 0);
  CAF_CHECK_EQUAL(tree(root),
                  (std::vector<std::string>{"j_7", "j_7/empty", "j_7/out.wav"}));
}

CAF_TEST(a second write replaces the artifact whole) {
  write(1, "result.json", std::string(10'000, 'a'));
  auto path = write(1, "result.json", R"({"y":1})");
  CAF_CHECK_EQUAL(slurp(path), R"({"y":1})");
  CAF_CHECK_EQUAL(value_of(store.find(1, "result.json"), "find").size, 7);
  CAF_CHECK_EQUAL(store.list(1), std::vector<std::string>{"result.json"});
  CAF_CHECK_EQUAL(tree(root), (std::vector<std::string>{"j_1", "j_1/result.json"}));
}

CAF_TEST(names that could escape the job directory are refused) {
  for (const auto& name : std::vector<std::string>{
           "../x", ".hidden", "", "a/b", std::string(129, 'x'), ".", "..", "a b", "a\\b",
           std::string{"a\0b", 3}, "caf\xc3\xa9", "/etc/passwd", "~x", "x:y"}) {
    CAF_MESSAGE("name '" << printable(name) << "'");
    CAF_CHECK(!artifact_store::valid_name(name));
    auto refused = store.write(1, name, "x");
    CAF_REQUIRE(!refused);
    CAF_CHECK_EQUAL(code_of(refused.error()), errc::invalid_input);
    auto missing = store.find(1, name);
    CAF_REQUIRE(!missing);
    CAF_CHECK_EQUAL(code_of(missing.error()), errc::not_found);
  }
  CAF_CHECK_EQUAL(message_of(store.write(1, "../x", "x").error()),
                  "invalid artifact name '../x': 1..128 characters of [A-Za-z0-9._-], "
                  "not starting with '.'");
  CAF_CHECK_EQUAL(message_of(store.find(1, "../x").error()),
                  "no artifact '../x' for job j_1");
  // Nothing was written anywhere, not even the root.
  CAF_CHECK(!fs::exists(root));
  CAF_CHECK_EQUAL(tree(dir.path()), std::vector<std::string>{});
  // The edges of what is allowed.
  for (const auto& name : std::vector<std::string>{std::string(128, 'x'), "a", "a..b",
                                                   "A-Z_0.9", "x.", "-"}) {
    CAF_MESSAGE("name '" << printable(name) << "'");
    CAF_CHECK(artifact_store::valid_name(name));
    write(1, name, "ok");
  }
  CAF_CHECK_EQUAL(store.list(1).size(), 6u);
  // Job ids are positive.
  CAF_CHECK_EQUAL(code_of(store.write(0, "a", "x").error()), errc::invalid_input);
  CAF_CHECK_EQUAL(code_of(store.write(-1, "a", "x").error()), errc::invalid_input);
  CAF_CHECK_EQUAL(code_of(store.find(-1, "a").error()), errc::not_found);
  CAF_CHECK(store.list(-1).empty());
  CAF_CHECK_EQUAL(code_of(store.remove_job(0).error()), errc::invalid_input);
}

CAF_TEST(find says not_found for a missing artifact or job) {
  write(3, "present", "x");
  auto missing = store.find(3, "missing.bin");
  CAF_REQUIRE(!missing);
  CAF_CHECK_EQUAL(code_of(missing.error()), errc::not_found);
  CAF_CHECK_EQUAL(message_of(missing.error()), "no artifact 'missing.bin' for job j_3");
  auto no_job = store.find(4, "present");
  CAF_REQUIRE(!no_job);
  CAF_CHECK_EQUAL(message_of(no_job.error()), "no artifact 'present' for job j_4");
  // A directory (or anything but a regular file) under a valid name is no
  // artifact either.
  fs::create_directories(root + "/j_3/sub");
  CAF_CHECK_EQUAL(code_of(store.find(3, "sub").error()), errc::not_found);
  fs::create_symlink(root + "/j_3/present", root + "/j_3/link");
  CAF_CHECK_EQUAL(code_of(store.find(3, "link").error()), errc::not_found);
  CAF_CHECK_EQUAL(store.list(3), std::vector<std::string>{"present"});
}

CAF_TEST(list returns the names of one job sorted) {
  CAF_CHECK(store.list(1).empty()); // no root yet
  for (auto name : {"b.txt", "a.txt", "c-1", "C", "a.txt"})
    write(2, name, name);
  write(5, "other", "x");
  CAF_CHECK_EQUAL(store.list(2),
                  (std::vector<std::string>{"C", "a.txt", "b.txt", "c-1"}));
  CAF_CHECK_EQUAL(store.list(5), std::vector<std::string>{"other"});
  CAF_CHECK(store.list(1).empty());
  // A temporary file a crashed writer left behind is not an artifact.
  { std::ofstream{root + "/j_5/.other.tmp.1.0"} << "partial"; }
  CAF_CHECK_EQUAL(store.list(5), std::vector<std::string>{"other"});
  CAF_CHECK_EQUAL(code_of(store.find(5, ".other.tmp.1.0").error()), errc::not_found);
}

CAF_TEST(remove_job deletes the directory and counts the bytes) {
  write(9, "a", std::string(1000, 'a'));
  write(9, "b", std::string(24, 'b'));
  write(9, "c", "");
  write(10, "keep", "kept");
  // Whatever else lies there goes too (a crashed writer's temporary file).
  { std::ofstream{root + "/j_9/.a.tmp.1.0"} << "12345"; }
  CAF_CHECK_EQUAL(value_of(store.remove_job(9), "remove_job"), 1029);
  CAF_CHECK(!fs::exists(root + "/j_9"));
  CAF_CHECK(store.list(9).empty());
  CAF_CHECK_EQUAL(code_of(store.find(9, "a").error()), errc::not_found);
  CAF_CHECK_EQUAL(value_of(store.remove_job(9), "again"), 0);
  CAF_CHECK_EQUAL(value_of(store.remove_job(11), "never written"), 0);
  CAF_CHECK_EQUAL(slurp(value_of(store.find(10, "keep"), "find").path), "kept");
  // A job can write again after its removal.
  write(9, "a", "new");
  CAF_CHECK_EQUAL(store.list(9), std::vector<std::string>{"a"});
}

CAF_TEST(io failures are storage errors that leave nothing behind) {
  // The root is a file: the job directory cannot be made.
  testing::temp_dir other;
  { std::ofstream{other.str("file")} << "x"; }
  artifact_store blocked{other.str("file")};
  auto no_dir = blocked.write(1, "a", "x");
  CAF_REQUIRE(!no_dir);
  CAF_CHECK_EQUAL(code_of(no_dir.error()), errc::storage_error);
  CAF_CHECK_NOT_EQUAL(message_of(no_dir.error()).find(other.str("file") + "/j_1"),
                      std::string::npos);
  CAF_CHECK_EQUAL(slurp(other.str("file")), "x");
  // A directory in the way of the final name: the rename fails, the old
  // directory stays and the temporary file is gone.
  fs::create_directories(root + "/j_1/taken/inside");
  auto no_rename = store.write(1, "taken", "x");
  CAF_REQUIRE(!no_rename);
  CAF_CHECK_EQUAL(code_of(no_rename.error()), errc::storage_error);
  auto msg = message_of(no_rename.error());
  CAF_CHECK_NOT_EQUAL(msg.find("rename"), std::string::npos);
  CAF_CHECK_NOT_EQUAL(msg.find(root + "/j_1/taken"), std::string::npos);
  CAF_CHECK_NOT_EQUAL(msg.find("Is a directory"), std::string::npos);
  CAF_CHECK_EQUAL(tree(root),
                  (std::vector<std::string>{"j_1", "j_1/taken", "j_1/taken/inside"}));
}

CAF_TEST(writes leave no temporary files even when racing on one name) {
  std::string a(100'000, 'a');
  std::string b(100'000, 'b');
  std::vector<std::thread> writers;
  for (auto* bytes : {&a, &b})
    writers.emplace_back([&, bytes] {
      for (int i = 0; i < 20; ++i)
        if (!store.write(4, "shared.bin", *bytes))
          return;
    });
  for (auto& t : writers)
    t.join();
  // Whole files only: one writer's bytes or the other's, never a mix.
  auto path = value_of(store.find(4, "shared.bin"), "find").path;
  auto last = slurp(path);
  CAF_CHECK(last == a || last == b);
  CAF_CHECK_EQUAL(tree(root), (std::vector<std::string>{"j_4", "j_4/shared.bin"}));
}

CAF_TEST_FIXTURE_SCOPE_END()
