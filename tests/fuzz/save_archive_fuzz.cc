// libFuzzer target: the `docker save` archive reader (store/save_archive.h) must take any file
// as an archive or refuse it with an error, never crash, hang or read outside the archive; for
// every image it accepts, each layer is opened and its tar entries are read to the end.
#include <sys/mman.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/posix_file.h"
#include "store/save_archive.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using extrafs::Status;
  // The reader takes a path: the input goes into an anonymous file, named through /proc.
  extrafs::Fd fd(::memfd_create("save-archive-fuzz", MFD_CLOEXEC));
  if (!fd.valid() || extrafs::write_all(fd.get(), data, size) != 0) __builtin_trap();
  const std::string path = "/proc/self/fd/" + std::to_string(fd.get());
  auto sa = extrafs::store::SaveArchive::open(path);
  if (!sa.ok()) {
    if (sa.error().message.empty()) __builtin_trap();
    return 0;
  }
  for (const auto& img : sa->images()) {
    if (img.layers.size() != img.diff_ids.size()) __builtin_trap();
    for (const auto& layer : img.layers) {
      auto diff_id = sa->read_layer(layer, [](struct archive* a) -> Status {
        struct archive_entry* e;
        char buf[4096];
        for (int n = 0; n < 10000 && archive_read_next_header(a, &e) == ARCHIVE_OK; ++n)
          while (archive_read_data(a, buf, sizeof buf) > 0) {
          }
        return extrafs::ok_status();
      });
      if (!diff_id.ok() && diff_id.error().message.empty()) __builtin_trap();
    }
  }
  return 0;
}
