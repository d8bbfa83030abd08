#include "common/hash.h"

#include <xxhash.h>
#ifdef EXTRAFS_XXH_DISPATCH
#include <xxh_x86dispatch.h>  // XXH3_* become their run-time dispatching variants
#endif

namespace extrafs {

namespace {
Digest128 from_xxh(XXH128_hash_t h) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  Digest128 d;
  static_assert(sizeof c.digest == 16);
  __builtin_memcpy(d.bytes.data(), c.digest, 16);
  return d;
}
}  // namespace

std::string Digest128::hex() const {
  static const char* kHex = "0123456789abcdef";
  std::string s(32, '0');
  for (size_t i = 0; i < 16; ++i) {
    s[2 * i] = kHex[bytes[i] >> 4];
    s[2 * i + 1] = kHex[bytes[i] & 15];
  }
  return s;
}

bool Digest128::from_hex(std::string_view hex, Digest128* out) {
  if (hex.size() != 32) return false;
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (size_t i = 0; i < 16; ++i) {
    int hi = nib(hex[2 * i]), lo = nib(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out->bytes[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

bool Digest128::is_zero() const {
  for (auto b : bytes)
    if (b) return false;
  return true;
}

Digest128 xxh3_128(const void* data, size_t len) { return from_xxh(XXH3_128bits(data, len)); }
uint64_t xxh3_64(const void* data, size_t len) { return XXH3_64bits(data, len); }

Xxh3Stream::Xxh3Stream() : state_(XXH3_createState()) { XXH3_128bits_reset(static_cast<XXH3_state_t*>(state_)); }
Xxh3Stream::~Xxh3Stream() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }
void Xxh3Stream::update(const void* data, size_t len) {
  XXH3_128bits_update(static_cast<XXH3_state_t*>(state_), data, len);
}
Digest128 Xxh3Stream::finish() { return from_xxh(XXH3_128bits_digest(static_cast<XXH3_state_t*>(state_))); }

}  // namespace extrafs
