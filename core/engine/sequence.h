// One generation request inside the engine: what the scheduler queues (ScheduledRequest), what
// the caller holds (RequestHandle), and what the executor needs to run it (adapter, generator).
#ifndef LORASERVE_CORE_ENGINE_SEQUENCE_H_
#define LORASERVE_CORE_ENGINE_SEQUENCE_H_

#include <cstdint>
#include <memory>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "core/engine/engine.h"
#include "core/engine/generate.h"
#include "core/engine/scheduler.h"
#include "core/lora/lora_adapter.h"

namespace loraserve::core {

struct Sequence : public RequestHandle, public ScheduledRequest {
  GenerateRequest request;
  GenerateCallbacks callbacks;
  std::shared_ptr<const LoraAdapter> adapter;  // held for the whole request (safe under delete)
  std::unique_ptr<SequenceGenerator> generator;
  absl::Time first_token = absl::InfinitePast();
  // Set by SubmitGenerate once the request is complete, for a load finishing on another thread.
  absl::Notification ready_to_submit;

  void Cancel() override { Scheduler::Cancel(*this); }
  // Token `position` of the context: the prompt, then the generated tokens.
  int32_t TokenAt(int64_t position) const {
    const int64_t prompt = static_cast<int64_t>(request.prompt_ids.size());
    return position < prompt ? request.prompt_ids[static_cast<size_t>(position)]
                             : generator->result().tokens[static_cast<size_t>(position - prompt)];
  }
};

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_ENGINE_SEQUENCE_H_
