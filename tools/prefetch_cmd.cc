// `extrafs prefetch MOUNTPOINT IMAGE [--trace FILE]`: warms the block cache of a running mount
// with an image's files, by reading them through the mount (so the daemon fetches, verifies and
// caches each chunk exactly as it would for a container). With --trace, only the files a
// recorded start-up touched (`-o record=DIR`), in the order it touched them.
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "common/mountinfo.h"
#include "common/posix_file.h"
#include "common/str_util.h"
#include "store/docker_meta.h"
#include "store/trace.h"
#include "tools/commands.h"
#include "tools/mount_stats.h"

namespace extrafs::tools {

namespace {

// Reads `path` to the end; false if it cannot be read (or is not a regular file: a trace may
// name a FIFO, which would block).
bool read_through(const std::string& path, std::vector<char>& buf, uint64_t* bytes) {
  auto opened = open_regular(path, O_NOFOLLOW);
  if (!opened.ok()) return false;
  const int fd = opened->get();
  bool ok = true;
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ok = false;
      break;
    }
    if (n == 0) break;
    *bytes += static_cast<uint64_t>(n);
  }
  return ok;
}

std::vector<std::string>* g_walk_out = nullptr;  // nftw has no user pointer
std::set<std::pair<dev_t, ino_t>>* g_walk_seen = nullptr;

int collect(const char* path, const struct stat* st, int type, struct FTW*) {
  if (type == FTW_F && S_ISREG(st->st_mode) && st->st_size > 0 && g_walk_seen->insert({st->st_dev, st->st_ino}).second)
    g_walk_out->emplace_back(path);
  return 0;
}

uint64_t fetched_bytes(const std::string& mnt) {
  auto j = read_mount_stats(mnt);
  return j.ok() && j->contains("bytes_fetched") ? (*j)["bytes_fetched"].get<uint64_t>() : 0;
}

int run_prefetch(const std::string& mnt_in, const std::string& image, const std::string& trace) {
  char real[PATH_MAX];
  if (!::realpath(mnt_in.c_str(), real)) return fail(mnt_in + ": " + std::strerror(errno));
  std::string mnt = real, fstype;
  if (!is_mount_point(mnt, &fstype) || fstype != "fuse.extrafs") return fail(mnt_in + " is not an extrafs mount");
  auto meta = store::DockerMeta::load(mnt);
  if (!meta.ok()) return fail(meta.error().message);
  auto img = meta->image(image);
  if (!img.ok()) return fail(img.error().message);

  std::vector<std::string> files;
  if (!trace.empty()) {
    auto entries = store::read_trace_file(trace);
    if (!entries.ok()) return fail("trace " + entries.error().message);
    std::set<std::string> layers;
    for (const auto& l : img->layers) layers.insert(l.cache_id);
    std::set<std::string> seen;
    for (const auto& e : *entries) {
      std::string full = mnt + "/overlay2/" + e.cache_id + "/diff/" + e.path;
      if (layers.count(e.cache_id) && seen.insert(full).second) files.push_back(full);
    }
  } else {
    std::set<std::pair<dev_t, ino_t>> seen;
    g_walk_out = &files;
    g_walk_seen = &seen;
    for (const auto& l : img->layers) {
      std::string dir = mnt + "/overlay2/" + l.cache_id + "/diff";
      if (::nftw(dir.c_str(), collect, 64, FTW_PHYS) != 0)
        return fail("cannot walk " + dir + ": " + std::strerror(errno));
    }
  }

  uint64_t before = fetched_bytes(mnt);
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> bytes{0};
  std::mutex mu;
  std::vector<std::string> failed;
  auto worker = [&] {
    std::vector<char> buf(1 << 20);
    for (size_t i; (i = next++) < files.size();) {
      uint64_t n = 0;
      bool ok = read_through(files[i], buf, &n);
      bytes += n;
      if (!ok) {
        std::lock_guard lock(mu);
        failed.push_back(files[i]);
      }
    }
  };
  // A few readers in parallel keep several chunk fetches in flight; the trace order is kept
  // approximately (each worker takes the next file in order).
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  uint64_t after = fetched_bytes(mnt);
  std::printf("%zu files, %s read, %s fetched from the store\n", files.size(), format_size(bytes).c_str(),
              format_size(after - before).c_str());
  if (!failed.empty()) return fail(std::to_string(failed.size()) + " files could not be read, e.g. " + failed.front());
  return 0;
}

}  // namespace

void add_prefetch_command(CLI::App& app, int* exit_code) {
  auto* sub = app.add_subcommand("prefetch", "fetch an image's files into the cache of a running mount");
  auto mnt = std::make_shared<std::string>();
  auto image = std::make_shared<std::string>();
  auto trace = std::make_shared<std::string>();
  sub->add_option("MOUNTPOINT", *mnt, "an extrafs mount")->required();
  sub->add_option("IMAGE", *image, "name:tag as docker shows it")->required();
  sub->add_option("--trace", *trace, "only the files in this trace (from -o record=DIR), in its order");
  sub->callback([=] { *exit_code = run_prefetch(*mnt, *image, *trace); });
}

}  // namespace extrafs::tools
