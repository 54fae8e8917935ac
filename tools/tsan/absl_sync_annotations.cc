// ThreadSanitizer support for an uninstrumented Abseil (TSan builds only, LORASERVE_TSAN).
//
// Debian's libabsl_synchronization is not built with -fsanitize=thread, so absl::Mutex and
// absl::CondVar synchronize through atomics and futexes TSan cannot see. Every access our code
// guards with an absl::Mutex would then be reported as a data race, and so would everything handed
// between threads through gRPC, which locks with absl::Mutex too (gpr_mu). This file interposes
// those functions and absl::Notification's in the executable (ELF symbol interposition: the
// executable's definition wins for our code, gRPC and Abseil itself, whose internal calls go
// through the PLT), tells TSan about each lock and unlock with the same __tsan_mutex_* annotations
// Abseil's own TSan build uses, and calls the real implementation found with dlsym(RTLD_NEXT).
// Nested calls (e.g. AwaitWithTimeout, which calls AwaitWithDeadline) are annotated once, by the
// outermost one.
//
// Linked into every executable of a TSan build (see loraserve_link_tsan_support in the top-level
// CMakeLists.txt); never into libraries. It also makes tests/tsan.supp the default suppressions
// (__tsan_default_options below), so ctest and hand-run binaries use it; TSAN_OPTIONS overrides.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/base/options.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

#if !ABSL_OPTION_USE_INLINE_NAMESPACE
#error "absl_sync_annotations.cc expects Abseil's inline namespace"
#endif

// In the TSan runtime, not declared by <sanitizer/tsan_interface.h> of GCC 12.
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();

namespace {

#define LORASERVE_STRINGIFY_INNER(x) #x
#define LORASERVE_STRINGIFY(x) LORASERVE_STRINGIFY_INNER(x)

// The real function `_ZN[K]4absl<len><inline namespace><rest>` from the next object (libabsl);
// `qualifier` is "K" for a const member function.
void* RealFunction(const char* qualifier, const char* rest) {
  const char* ns = LORASERVE_STRINGIFY(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  const std::string name =
      std::string("_ZN") + qualifier + "4absl" + std::to_string(std::strlen(ns)) + ns + rest;
  void* fn = dlsym(RTLD_NEXT, name.c_str());
  if (fn == nullptr) {
    std::fprintf(stderr, "absl_sync_annotations: %s not found: %s\n", name.c_str(), dlerror());
    std::abort();
  }
  return fn;
}

template <typename Fn>
Fn Real(const char* rest) {
  return reinterpret_cast<Fn>(RealFunction("", rest));
}
template <typename Fn>
Fn RealConst(const char* rest) {
  return reinterpret_cast<Fn>(RealFunction("K", rest));
}

// Depth of interposed calls on this thread: only the outermost one annotates.
thread_local int depth = 0;

class Nesting {
 public:
  Nesting() : outermost_(depth++ == 0) {}
  ~Nesting() { --depth; }
  bool outermost() const { return outermost_; }

 private:
  const bool outermost_;
};

// The mutex is released inside `wait` and held again when it returns (Await, CondVar::Wait):
// a release before, an acquire after, and accesses in between (conditions evaluated by the real
// implementation) are ignored, as in Abseil's own TSan build.
template <typename Wait>
auto ReleasedDuring(void* mu, Wait wait) {
  __tsan_mutex_pre_unlock(mu, 0);
  auto result = wait();
  __tsan_mutex_post_unlock(mu, 0);
  __tsan_mutex_pre_lock(mu, 0);
  __tsan_mutex_post_lock(mu, 0, 0);
  return result;
}

// Runs `lock` (which returns with the mutex held) annotated as a lock with `flags`.
template <typename Lock>
auto Locking(void* mu, unsigned flags, Lock lock) {
  __tsan_mutex_pre_lock(mu, flags);
  auto result = lock();
  __tsan_mutex_post_lock(mu, flags, 0);
  return result;
}

}  // namespace

// Read by the TSan runtime before TSAN_OPTIONS (which wins flag by flag).
extern "C" const char* __tsan_default_options() {
  return "suppressions=" LORASERVE_TSAN_SUPPRESSIONS " second_deadlock_stack=1";
}

namespace absl {
ABSL_NAMESPACE_BEGIN

// ---- Mutex: lock / unlock -----------------------------------------------------------------------

void Mutex::Lock() {
  static const auto real = Real<void (*)(Mutex*)>("5Mutex4LockEv");
  Nesting n;
  if (!n.outermost()) return real(this);
  Locking(this, 0, [&] { return (real(this), 0); });
}

void Mutex::ReaderLock() {
  static const auto real = Real<void (*)(Mutex*)>("5Mutex10ReaderLockEv");
  Nesting n;
  if (!n.outermost()) return real(this);
  Locking(this, __tsan_mutex_read_lock, [&] { return (real(this), 0); });
}

bool Mutex::TryLock() {
  static const auto real = Real<bool (*)(Mutex*)>("5Mutex7TryLockEv");
  Nesting n;
  if (!n.outermost()) return real(this);
  __tsan_mutex_pre_lock(this, __tsan_mutex_try_lock);
  const bool locked = real(this);
  __tsan_mutex_post_lock(this, locked ? __tsan_mutex_try_lock : __tsan_mutex_try_lock_failed, 0);
  return locked;
}

bool Mutex::ReaderTryLock() {
  static const auto real = Real<bool (*)(Mutex*)>("5Mutex13ReaderTryLockEv");
  Nesting n;
  if (!n.outermost()) return real(this);
  __tsan_mutex_pre_lock(this, __tsan_mutex_try_read_lock);
  const bool locked = real(this);
  __tsan_mutex_post_lock(
      this, locked ? __tsan_mutex_try_read_lock : __tsan_mutex_try_read_lock_failed, 0);
  return locked;
}

void Mutex::Unlock() {
  static const auto real = Real<void (*)(Mutex*)>("5Mutex6UnlockEv");
  Nesting n;
  if (!n.outermost()) return real(this);
  __tsan_mutex_pre_unlock(this, 0);
  real(this);
  __tsan_mutex_post_unlock(this, 0);
}

void Mutex::ReaderUnlock() {
  static const auto real = Real<void (*)(Mutex*)>("5Mutex12ReaderUnlockEv");
  Nesting n;
  if (!n.outermost()) return real(this);
  __tsan_mutex_pre_unlock(this, __tsan_mutex_read_lock);
  real(this);
  __tsan_mutex_post_unlock(this, __tsan_mutex_read_lock);
}

// ---- Mutex: conditional locking -----------------------------------------------------------------

void Mutex::LockWhen(const Condition& cond) {
  static const auto real =
      Real<void (*)(Mutex*, const Condition&)>("5Mutex8LockWhenERKNS0_9ConditionE");
  Nesting n;
  if (!n.outermost()) return real(this, cond);
  Locking(this, 0, [&] { return (real(this, cond), 0); });
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, Duration)>(
      "5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Nesting n;
  if (!n.outermost()) return real(this, cond, timeout);
  return Locking(this, 0, [&] { return real(this, cond, timeout); });
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, Time)>(
      "5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Nesting n;
  if (!n.outermost()) return real(this, cond, deadline);
  return Locking(this, 0, [&] { return real(this, cond, deadline); });
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  static const auto real =
      Real<void (*)(Mutex*, const Condition&)>("5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  Nesting n;
  if (!n.outermost()) return real(this, cond);
  Locking(this, __tsan_mutex_read_lock, [&] { return (real(this, cond), 0); });
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, Duration)>(
      "5Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Nesting n;
  if (!n.outermost()) return real(this, cond, timeout);
  return Locking(this, __tsan_mutex_read_lock, [&] { return real(this, cond, timeout); });
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, Time deadline) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, Time)>(
      "5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Nesting n;
  if (!n.outermost()) return real(this, cond, deadline);
  return Locking(this, __tsan_mutex_read_lock, [&] { return real(this, cond, deadline); });
}

// ---- Mutex: waiting with the lock held (exclusive mode, the only one this project uses) ---------

void Mutex::Await(const Condition& cond) {
  static const auto real =
      Real<void (*)(Mutex*, const Condition&)>("5Mutex5AwaitERKNS0_9ConditionE");
  Nesting n;
  if (!n.outermost()) return real(this, cond);
  ReleasedDuring(this, [&] { return (real(this, cond), 0); });
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, Duration)>(
      "5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Nesting n;
  if (!n.outermost()) return real(this, cond, timeout);
  return ReleasedDuring(this, [&] { return real(this, cond, timeout); });
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, Time)>(
      "5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Nesting n;
  if (!n.outermost()) return real(this, cond, deadline);
  return ReleasedDuring(this, [&] { return real(this, cond, deadline); });
}


// Mutex::~Mutex is not interposed: a destroy annotation is a write to the mutex, and gRPC destroys
// its mutexes after handing their owner between threads with reference counts TSan cannot see.
// Heap mutexes are forgotten by TSan when their memory is freed.

// ---- CondVar ------------------------------------------------------------------------------------

void CondVar::Wait(Mutex* mu) {
  static const auto real = Real<void (*)(CondVar*, Mutex*)>("7CondVar4WaitEPNS0_5MutexE");
  Nesting n;
  if (!n.outermost()) return real(this, mu);
  ReleasedDuring(mu, [&] { return (real(this, mu), 0); });
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  static const auto real = Real<bool (*)(CondVar*, Mutex*, Duration)>(
      "7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  Nesting n;
  if (!n.outermost()) return real(this, mu, timeout);
  return ReleasedDuring(mu, [&] { return real(this, mu, timeout); });
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  static const auto real = Real<bool (*)(CondVar*, Mutex*, Time)>(
      "7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  Nesting n;
  if (!n.outermost()) return real(this, mu, deadline);
  return ReleasedDuring(mu, [&] { return real(this, mu, deadline); });
}

// ---- Notification -------------------------------------------------------------------------------
// WaitForNotification returns at once, without locking, when the notification has happened: its
// atomic flag (uninstrumented) is the only synchronization then, so Notify releases and a
// successful wait acquires on the Notification itself. (The inline HasBeenNotified() is not
// covered: this project does not use it.)

void Notification::Notify() {
  static const auto real = Real<void (*)(Notification*)>("12Notification6NotifyEv");
  __tsan_release(this);
  real(this);
}

void Notification::WaitForNotification() const {
  static const auto real =
      RealConst<void (*)(const Notification*)>("12Notification19WaitForNotificationEv");
  real(this);
  __tsan_acquire(const_cast<Notification*>(this));
}

bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  static const auto real = RealConst<bool (*)(const Notification*, Duration)>(
      "12Notification30WaitForNotificationWithTimeoutENS0_8DurationE");
  const bool notified = real(this, timeout);
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  static const auto real = RealConst<bool (*)(const Notification*, Time)>(
      "12Notification31WaitForNotificationWithDeadlineENS0_4TimeE");
  const bool notified = real(this, deadline);
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

// ---- Status -------------------------------------------------------------------------------------
// gRPC shares absl::Status reps (with payloads) between threads; the last reference is dropped in
// libabsl_status with an atomic decrement TSan cannot see, and the rep freed there. That free is a
// tail call, so TSan attributes it to the inline Status::Unref in the caller, where
// called_from_lib (tests/tsan.supp) does not apply. Treat it as the library's own access.

void Status::UnrefNonInlined(uintptr_t rep) {
  static const auto real = Real<void (*)(uintptr_t)>("6Status15UnrefNonInlinedEm");
  __tsan_ignore_thread_begin();
  real(rep);
  __tsan_ignore_thread_end();
}

ABSL_NAMESPACE_END
}  // namespace absl
