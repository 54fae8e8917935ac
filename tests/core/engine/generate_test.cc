// Single-sequence generation: Generate on the real stories260K checkpoint against llama2.c's
// greedy reference and Model::Score, and the ContinuationDecoder. The Sampler and StopMatcher
// are tested in tests/core/model/sampler_test.cc.
#include "core/engine/generate.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/io/json_file.h"
#include "core/model/model.h"
#include "core/tokenizer/tokenizer.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

using ::loraserve::testing::StatusIs;
using ::testing::HasSubstr;

// Lends one long-lived hooks object to every forward (the test hooks count calls across steps).
class BorrowedHooks : public ForwardHooks {
 public:
  explicit BorrowedHooks(ForwardHooks* target) : target_(target) {}
  at::Tensor OnLinear(const LinearModule& m, const at::Tensor& x, at::Tensor y) override {
    return target_->OnLinear(m, x, std::move(y));
  }
  at::Tensor OnEmbedding(const at::Tensor& ids, at::Tensor y) override {
    return target_->OnEmbedding(ids, std::move(y));
  }
  at::Tensor OnHead(const at::Tensor& h, const at::Tensor& rows, at::Tensor logits) override {
    return target_->OnHead(h, rows, std::move(logits));
  }

 private:
  ForwardHooks* target_;
};

class GenerateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LORASERVE_REQUIRE_SHARED();
    const std::string dir = testing::SharedPath("fixtures/models/stories260K");
    ASSERT_OK_AND_ASSIGN(model_, Model::Load(dir, ModelOptions()));
    ASSERT_OK_AND_ASSIGN(tokenizer_, Tokenizer::FromFile(dir + "/tokenizer.json"));
    ASSERT_OK_AND_ASSIGN(reference_, ReadJsonFile(dir + "/greedy_reference.json"));
  }

  absl::StatusOr<GenerationResult> Complete(const std::vector<int32_t>& prompt,
                                            const SamplingOptions& options,
                                            ForwardHooks* hooks = nullptr,
                                            std::vector<TokenEvent>* events = nullptr) {
    std::function<bool(const TokenEvent&)> on_token;
    if (events != nullptr) {
      on_token = [events](const TokenEvent& e) {
        events->push_back(e);
        return true;
      };
    }
    HooksFactory factory;
    if (hooks != nullptr) {
      factory = [hooks](absl::Span<const SequenceInput>) -> std::unique_ptr<ForwardHooks> {
        return std::make_unique<BorrowedHooks>(hooks);
      };
    }
    return Generate(*model_, *tokenizer_, prompt, options, factory, on_token);
  }

  static SamplingOptions Greedy(int n) {
    SamplingOptions o;
    o.temperature = 0;
    o.max_new_tokens = n;
    o.stop_on_eos = false;  // as the reference
    return o;
  }

  // Checks a greedy continuation against the reference. Where they part, the two tokens must be a
  // near-tie of the logits at that point (fp32 summation order may flip such a tie), and the
  // comparison ends there.
  void ExpectMatchesReference(const char* key) {
    const Json& ref = reference_[key];
    const auto all = ref["ids"].get<std::vector<int32_t>>();
    const auto prompt = ref["prompt_ids"].get<std::vector<int32_t>>();
    const int n = ref["new_tokens"].get<int>();
    ASSERT_EQ(all.size(), prompt.size() + n);
    std::vector<TokenEvent> events;
    ASSERT_OK_AND_ASSIGN(GenerationResult r, Complete(prompt, Greedy(n), nullptr, &events));
    ASSERT_EQ(r.tokens.size(), static_cast<size_t>(n));
    EXPECT_EQ(r.finish_reason, FinishReason::kLength);
    ASSERT_EQ(events.size(), r.tokens.size());
    std::string streamed;
    for (size_t i = 0; i < events.size(); ++i) {
      EXPECT_EQ(events[i].id, r.tokens[i]);
      EXPECT_EQ(events[i].index, static_cast<int32_t>(i));
      streamed += events[i].text;
    }
    EXPECT_EQ(streamed, r.text);
    for (int i = 0; i < n; ++i) {
      const int32_t want = all[prompt.size() + i];
      if (r.tokens[i] == want) continue;
      std::vector<int32_t> prefix(all.begin(), all.begin() + prompt.size() + i);
      ASSERT_OK_AND_ASSIGN(at::Tensor logits, model_->Score(prefix));
      const at::Tensor last = logits[-1];
      const double gap = std::abs(last[want].item<double>() - last[r.tokens[i]].item<double>());
      EXPECT_LT(gap, 1e-4) << key << ": token " << i << " is " << r.tokens[i] << ", reference "
                           << want << ", not a near-tie";
      RecordProperty("departs_at_near_tie", i);
      return;
    }
    // The whole continuation matched: the text is the reference's decoded continuation.
    RecordProperty("matches_all_tokens", n);
    const std::string full = ref["text"].get<std::string>();
    const std::string prompt_text = tokenizer_->Decode(prompt, true);
    ASSERT_EQ(full.compare(0, prompt_text.size(), prompt_text), 0);
    EXPECT_EQ(r.text, full.substr(prompt_text.size()));
  }

  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  Json reference_;
};

TEST_F(GenerateTest, GreedyFromBosMatchesReference) { ExpectMatchesReference("from_bos"); }

TEST_F(GenerateTest, GreedyFromPromptMatchesReference) {
  ExpectMatchesReference("from_once_upon_a_time");
  // The continuation keeps its leading space: after "Once upon a", the next word is " time".
  auto prompt = tokenizer_->Encode("Once upon a");
  ASSERT_OK_AND_ASSIGN(GenerationResult r, Complete(prompt, Greedy(1)));
  EXPECT_EQ(r.text, " time");
}

TEST_F(GenerateTest, SeedReproducesAtTemperatureOne) {
  SamplingOptions o;
  o.max_new_tokens = 40;
  o.stop_on_eos = false;
  o.seed = 7;
  const std::vector<int32_t> bos = {1};
  ASSERT_OK_AND_ASSIGN(GenerationResult a, Complete(bos, o));
  ASSERT_OK_AND_ASSIGN(GenerationResult b, Complete(bos, o));
  EXPECT_EQ(a.seed, 7u);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.text, b.text);
  o.seed = 8;
  ASSERT_OK_AND_ASSIGN(GenerationResult c, Complete(bos, o));
  EXPECT_NE(a.tokens, c.tokens);
  // Without a seed, each call draws one and reports it; reusing it reproduces the output.
  o.seed.reset();
  ASSERT_OK_AND_ASSIGN(GenerationResult d, Complete(bos, o));
  ASSERT_OK_AND_ASSIGN(GenerationResult e, Complete(bos, o));
  EXPECT_NE(d.seed, e.seed);
  EXPECT_NE(d.tokens, e.tokens);
  o.seed = d.seed;
  ASSERT_OK_AND_ASSIGN(GenerationResult f, Complete(bos, o));
  EXPECT_EQ(f.tokens, d.tokens);
}

TEST_F(GenerateTest, TopK1AndTinyTopPEqualGreedy) {
  const auto prompt = reference_["from_once_upon_a_time"]["prompt_ids"].get<std::vector<int32_t>>();
  ASSERT_OK_AND_ASSIGN(GenerationResult greedy, Complete(prompt, Greedy(48)));
  SamplingOptions o = Greedy(48);
  o.temperature = 1.0;
  o.seed = 5;
  o.top_k = 1;
  ASSERT_OK_AND_ASSIGN(GenerationResult k1, Complete(prompt, o));
  EXPECT_EQ(k1.tokens, greedy.tokens);
  o.top_k = 0;
  o.top_p = 1e-6;
  ASSERT_OK_AND_ASSIGN(GenerationResult p, Complete(prompt, o));
  EXPECT_EQ(p.tokens, greedy.tokens);
  // ... and plain sampling at this temperature does not (the comparison can fail).
  o.top_p = 1.0;
  ASSERT_OK_AND_ASSIGN(GenerationResult sampled, Complete(prompt, o));
  EXPECT_NE(sampled.tokens, greedy.tokens);
}

TEST_F(GenerateTest, StopStringCutsTheText) {
  const auto prompt = reference_["from_once_upon_a_time"]["prompt_ids"].get<std::vector<int32_t>>();
  ASSERT_OK_AND_ASSIGN(GenerationResult full, Complete(prompt, Greedy(64)));
  ASSERT_THAT(full.text, HasSubstr("girl named Lily."));
  // "named Lily" spans several tokens.
  for (const std::string stop : {"named Lily", "Lily", ".", "park. One"}) {
    SCOPED_TRACE(stop);
    SamplingOptions o = Greedy(64);
    o.stop = {"never appears", stop};
    std::vector<TokenEvent> events;
    ASSERT_OK_AND_ASSIGN(GenerationResult r, Complete(prompt, o, nullptr, &events));
    EXPECT_EQ(r.finish_reason, FinishReason::kStop);
    EXPECT_EQ(r.stop_string, stop);
    EXPECT_EQ(r.text, full.text.substr(0, full.text.find(stop)));
    // Generation ended with the token that completed the stop string.
    ASSERT_LT(r.tokens.size(), full.tokens.size());
    EXPECT_EQ(r.tokens, std::vector<int32_t>(full.tokens.begin(),
                                             full.tokens.begin() + r.tokens.size()));
    const std::string through_last = tokenizer_->Decode(r.tokens, true);
    const std::string before_last =
        tokenizer_->Decode(absl::MakeConstSpan(r.tokens).subspan(0, r.tokens.size() - 1), true);
    EXPECT_THAT(through_last, HasSubstr(stop));
    EXPECT_THAT(before_last, ::testing::Not(HasSubstr(stop)));
    std::string streamed;
    for (const TokenEvent& e : events) streamed += e.text;
    EXPECT_EQ(streamed, r.text);
  }
  // A stop string that never appears changes nothing.
  SamplingOptions o = Greedy(64);
  o.stop = {"zebra"};
  ASSERT_OK_AND_ASSIGN(GenerationResult r, Complete(prompt, o));
  EXPECT_EQ(r.finish_reason, FinishReason::kLength);
  EXPECT_EQ(r.text, full.text);
}

TEST_F(GenerateTest, MaxNewTokensGivesLength) {
  SamplingOptions o;
  o.max_new_tokens = 5;
  o.seed = 1;
  ASSERT_OK_AND_ASSIGN(GenerationResult r, Complete({1}, o));
  EXPECT_EQ(r.tokens.size(), 5u);
  EXPECT_EQ(r.finish_reason, FinishReason::kLength);
  EXPECT_EQ(r.text, tokenizer_->Decode(r.tokens, true));
}

TEST_F(GenerateTest, StopsWhenTheContextIsFull) {
  const int64_t max = model_->config().max_position_embeddings;
  std::vector<int32_t> prompt(max - 3, 300);
  prompt[0] = 1;
  SamplingOptions o = Greedy(100);
  ASSERT_OK_AND_ASSIGN(GenerationResult r, Complete(prompt, o));
  EXPECT_EQ(r.tokens.size(), 3u);
  EXPECT_EQ(r.finish_reason, FinishReason::kLength);
  prompt.assign(max + 1, 300);
  EXPECT_THAT(Complete(prompt, o), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("context")));
}

// Forces a given token at a given decode step by raising its logit in the head.
class ForceTokenHooks : public ForwardHooks {
 public:
  ForceTokenHooks(int step, int32_t id) : step_(step), id_(id) {}
  at::Tensor OnLinear(const LinearModule&, const at::Tensor&, at::Tensor y) override { return y; }
  at::Tensor OnEmbedding(const at::Tensor&, at::Tensor y) override { return y; }
  at::Tensor OnHead(const at::Tensor&, const at::Tensor&, at::Tensor logits) override {
    if (calls_++ == step_) logits.select(1, id_).fill_(1e4);
    return logits;
  }
  int calls() const { return calls_; }

 private:
  int step_;
  int32_t id_;
  int calls_ = 0;
};

TEST_F(GenerateTest, EosEndsGeneration) {
  ASSERT_EQ(tokenizer_->eos_id(), 2);
  ASSERT_OK_AND_ASSIGN(GenerationResult greedy, Complete({1}, Greedy(10)));
  ForceTokenHooks hooks(/*step=*/3, /*id=*/2);
  SamplingOptions o = Greedy(10);
  o.stop_on_eos = true;
  std::vector<TokenEvent> events;
  ASSERT_OK_AND_ASSIGN(GenerationResult r, Complete({1}, o, &hooks, &events));
  EXPECT_EQ(hooks.calls(), 4);
  EXPECT_EQ(r.finish_reason, FinishReason::kEos);
  ASSERT_EQ(r.tokens.size(), 4u);
  EXPECT_EQ(r.tokens.back(), 2);
  EXPECT_EQ(std::vector<int32_t>(r.tokens.begin(), r.tokens.begin() + 3),
            std::vector<int32_t>(greedy.tokens.begin(), greedy.tokens.begin() + 3));
  EXPECT_EQ(r.text, tokenizer_->Decode(absl::MakeConstSpan(greedy.tokens).subspan(0, 3), true));
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events.back().id, 2);
  // Without stop_on_eos the EOS token is just another token.
  ForceTokenHooks again(3, 2);
  o.stop_on_eos = false;
  ASSERT_OK_AND_ASSIGN(r, Complete({1}, o, &again));
  EXPECT_EQ(r.finish_reason, FinishReason::kLength);
  EXPECT_EQ(r.tokens.size(), 10u);
  EXPECT_EQ(r.tokens[3], 2);
}

TEST_F(GenerateTest, LogprobsMatchScore) {
  const auto prompt = reference_["from_once_upon_a_time"]["prompt_ids"].get<std::vector<int32_t>>();
  SamplingOptions o;
  o.temperature = 0.8;
  o.top_k = 40;
  o.seed = 3;
  o.max_new_tokens = 24;
  o.stop_on_eos = false;
  o.logprobs = true;
  o.top_logprobs = 5;
  std::vector<TokenEvent> events;
  ASSERT_OK_AND_ASSIGN(GenerationResult r, Complete(prompt, o, nullptr, &events));
  ASSERT_EQ(r.logprobs.size(), r.tokens.size());
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), r.tokens.begin(), r.tokens.end());
  ASSERT_OK_AND_ASSIGN(at::Tensor logits, model_->Score(all));
  const at::Tensor logp = at::log_softmax(logits, -1);
  for (size_t i = 0; i < r.tokens.size(); ++i) {
    const at::Tensor row = logp[prompt.size() - 1 + i];
    EXPECT_EQ(r.logprobs[i].id, r.tokens[i]);
    EXPECT_NEAR(r.logprobs[i].logprob, row[r.tokens[i]].item<float>(), 1e-4) << i;
    EXPECT_EQ(events[i].logprob, r.logprobs[i].logprob);
    ASSERT_EQ(r.logprobs[i].top_logprobs.size(), 5u);
    const auto top = at::topk(row, 5);
    for (int k = 0; k < 5; ++k) {
      EXPECT_NEAR(r.logprobs[i].top_logprobs[k].logprob, std::get<0>(top)[k].item<float>(), 1e-4);
      EXPECT_NEAR(row[r.logprobs[i].top_logprobs[k].id].item<float>(),
                  std::get<0>(top)[k].item<float>(), 1e-4);
    }
  }
  // Without logprobs none are returned.
  o.logprobs = false;
  o.top_logprobs = 0;
  ASSERT_OK_AND_ASSIGN(r, Complete(prompt, o));
  EXPECT_TRUE(r.logprobs.empty());
}

TEST_F(GenerateTest, CallbackCancels) {
  int seen = 0;
  SamplingOptions o = Greedy(50);
  ASSERT_OK_AND_ASSIGN(GenerationResult r,
                       Generate(*model_, *tokenizer_, {1}, o, nullptr,
                                [&](const TokenEvent&) { return ++seen < 3; }));
  EXPECT_EQ(seen, 3);
  EXPECT_EQ(r.finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(r.tokens.size(), 3u);
}

TEST_F(GenerateTest, RejectsBadRequests) {
  SamplingOptions o;
  EXPECT_THAT(Complete({}, o), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("prompt")));
  EXPECT_THAT(Complete({1, 100000}, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.top_p = 0;
  EXPECT_THAT(Complete({1}, o), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_p")));
}

TEST(ContinuationDecoderTest, DropsThePromptsHeldBackText) {
  LORASERVE_REQUIRE_SHARED();
  ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromFile(testing::SharedPath(
                                     "fixtures/models/stories260K/tokenizer.json")));
  // "🦙" and "日本" are byte-fallback tokens here, so the decoder holds the prompt's last bytes
  // back until the run ends; they must not reappear in the continuation.
  for (const std::string& text : {std::string("Once upon a time in a café"),
                                  std::string("I saw a 🦙"), std::string("日本"),
                                  std::string("Hi"), std::string("The cat sat.")}) {
    SCOPED_TRACE(text);
    const std::vector<int32_t> all = tok->Encode(text + " she said hello to the world");
    const std::vector<int32_t> prompt_only = tok->Encode(text);
    ASSERT_GT(all.size(), prompt_only.size());
    ASSERT_TRUE(std::equal(prompt_only.begin(), prompt_only.end(), all.begin()));
    const auto prompt = absl::MakeConstSpan(all).subspan(0, prompt_only.size());
    ContinuationDecoder d(*tok, prompt);
    std::string out;
    for (size_t i = prompt.size(); i < all.size(); ++i) out += d.Next(all[i]);
    out += d.Finish();
    EXPECT_EQ(out, " she said hello to the world");
  }
  // A prompt that ends inside a character. As in HF, a byte run that is not valid UTF-8 decodes
  // to one U+FFFD per byte, so the prompt alone reads "\uFFFD" x 4; once the continuation
  // completes the character, the run is decoded again and comes out with the continuation.
  const std::vector<int32_t> all = tok->Encode("日本 she said");
  const std::vector<int32_t> head = tok->Encode("日");
  ASSERT_EQ(all.size(), head.size() + 3 + 2);  // 本 = 3 byte tokens, then "▁she", "▁said"
  const auto prompt = absl::MakeConstSpan(all).subspan(0, head.size() + 1);
  ASSERT_EQ(tok->Decode(prompt, true), "\uFFFD\uFFFD\uFFFD\uFFFD");
  ContinuationDecoder d(*tok, prompt);
  std::string out;
  for (size_t i = prompt.size(); i < all.size(); ++i) out += d.Next(all[i]);
  out += d.Finish();
  EXPECT_EQ(out, "日本 she said");
}

}  // namespace
}  // namespace loraserve::core
