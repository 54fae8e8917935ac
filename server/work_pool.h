// A few threads for the blocking parts of RPCs (reading and validating adapter files, writing
// uploads, reading files to stream back), so that gRPC reactions never block.
// Thread-safe. The destructor runs every task already posted, then joins the threads.
#ifndef LORASERVE_SERVER_WORK_POOL_H_
#define LORASERVE_SERVER_WORK_POOL_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace loraserve::server {

class WorkPool {
 public:
  explicit WorkPool(int num_threads);
  ~WorkPool();
  WorkPool(const WorkPool&) = delete;
  WorkPool& operator=(const WorkPool&) = delete;

  // Runs `task` on a pool thread, in posting order per thread (no ordering across threads).
  void Post(std::function<void()> task);

 private:
  void Run();

  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_WORK_POOL_H_
