// Result<T>: a value or a positive errno plus a short message. Every fallible call below tools/
// returns one; exceptions never cross a FUSE op. Cheap to move; the message is only built on error.
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <variant>

namespace extrafs {

// An error: errno value (positive) and a human-readable one-line message naming what is wrong.
struct Error {
  int code = EIO;
  std::string message;

  static Error from_errno(int code, std::string what) {
    return Error{code, std::move(what) + ": " + std::strerror(code)};
  }
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const { return std::get<1>(v_); }
  int code() const { return ok() ? 0 : error().code; }

 private:
  std::variant<T, Error> v_;
};

// For calls that return nothing on success.
struct Ok {};
using Status = Result<Ok>;
inline Status ok_status() { return Ok{}; }

inline Error make_error(int code, std::string message) { return Error{code, std::move(message)}; }

}  // namespace extrafs

// Propagates an error from an expression returning Result<...>.
#define EXTRAFS_TRY(var, expr)                           \
  auto var##_result_ = (expr);                           \
  if (!var##_result_.ok()) return var##_result_.error(); \
  auto var = std::move(var##_result_).value()

#define EXTRAFS_CHECK_STATUS(expr)             \
  do {                                         \
    auto status_ = (expr);                     \
    if (!status_.ok()) return status_.error(); \
  } while (0)

// A broken invariant: abort with a message. Never used for bad input.
#define EXTRAFS_INVARIANT(cond, msg)                                                          \
  do {                                                                                        \
    if (!(cond)) {                                                                            \
      ::fprintf(stderr, "extrafs: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, msg); \
      ::abort();                                                                              \
    }                                                                                         \
  } while (0)
