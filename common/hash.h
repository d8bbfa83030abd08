// xxh3-128 digests as used for chunk verification and index identity.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace extrafs {

struct Digest128 {
  std::array<uint8_t, 16> bytes{};  // big-endian canonical form (XXH128_canonical_t)

  bool operator==(const Digest128&) const = default;
  std::string hex() const;
  static bool from_hex(std::string_view hex, Digest128* out);
  bool is_zero() const;
};

Digest128 xxh3_128(const void* data, size_t len);
inline Digest128 xxh3_128(std::span<const std::byte> s) { return xxh3_128(s.data(), s.size()); }
uint64_t xxh3_64(const void* data, size_t len);

// Incremental xxh3-128 for whole-file digests.
class Xxh3Stream {
 public:
  Xxh3Stream();
  ~Xxh3Stream();
  Xxh3Stream(const Xxh3Stream&) = delete;
  Xxh3Stream& operator=(const Xxh3Stream&) = delete;
  void update(const void* data, size_t len);
  Digest128 finish();

 private:
  void* state_;
};

struct Digest128Hash {
  size_t operator()(const Digest128& d) const {
    uint64_t v;
    __builtin_memcpy(&v, d.bytes.data(), sizeof v);
    return static_cast<size_t>(v);
  }
};

}  // namespace extrafs
