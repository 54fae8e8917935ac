// Sampling and stop strings: the Sampler against closed-form distributions and the StopMatcher
// against a direct search of the whole text (core/model/sampler.h).
#include "core/model/sampler.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <set>

#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

using ::loraserve::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

at::Tensor Logits(std::vector<float> values) {
  return at::tensor(at::ArrayRef<float>(values), at::kFloat);
}

// ---------------------------------------------------------------- options

TEST(ValidateSamplingOptionsTest, AcceptsDefaultsAndGreedy) {
  EXPECT_OK(ValidateSamplingOptions(SamplingOptions()));
  SamplingOptions o;
  o.temperature = 0;
  o.top_k = 5;
  o.top_p = 1;
  o.logprobs = true;
  o.top_logprobs = kMaxTopLogprobs;
  o.stop = {"\n\n", "END"};
  EXPECT_OK(ValidateSamplingOptions(o));
}

TEST(ValidateSamplingOptionsTest, RejectsBadValues) {
  auto invalid = [](auto mutate, const char* field) {
    SamplingOptions o;
    mutate(o);
    EXPECT_THAT(ValidateSamplingOptions(o),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(field)))
        << field;
  };
  invalid([](SamplingOptions& o) { o.temperature = -0.1; }, "temperature");
  invalid([](SamplingOptions& o) { o.temperature = std::nan(""); }, "temperature");
  invalid([](SamplingOptions& o) { o.temperature = INFINITY; }, "temperature");
  invalid([](SamplingOptions& o) { o.top_k = -1; }, "top_k");
  invalid([](SamplingOptions& o) { o.top_p = 0; }, "top_p");
  invalid([](SamplingOptions& o) { o.top_p = 1.5; }, "top_p");
  invalid([](SamplingOptions& o) { o.top_p = std::nan(""); }, "top_p");
  invalid([](SamplingOptions& o) { o.max_new_tokens = 0; }, "max_new_tokens");
  invalid([](SamplingOptions& o) { o.stop = {"ok", ""}; }, "stop");
  invalid([](SamplingOptions& o) { o.stop.assign(kMaxStopStrings + 1, "x"); }, "stop");
  invalid([](SamplingOptions& o) { o.stop = {std::string(kMaxStopStringBytes + 1, 'x')}; },
          "stop");
  invalid([](SamplingOptions& o) { o.top_logprobs = 3; }, "logprobs");  // without logprobs
  invalid(
      [](SamplingOptions& o) {
        o.logprobs = true;
        o.top_logprobs = kMaxTopLogprobs + 1;
      },
      "top_logprobs");
}

// ---------------------------------------------------------------- Sampler

TEST(SamplerTest, GreedyIsArgmaxWithLowestIdOnTies) {
  SamplingOptions o;
  o.temperature = 0;
  Sampler s(o);
  ASSERT_OK_AND_ASSIGN(SampledToken t, s.Sample(Logits({1, 5, 5, 2})));
  EXPECT_EQ(t.id, 1);
  ASSERT_OK_AND_ASSIGN(t, s.Sample(Logits({-INFINITY, -3, -INFINITY, -7})));
  EXPECT_EQ(t.id, 1);
}

TEST(SamplerTest, TopK1AndTinyTopPPickTheLowestIdAmongTiedMaxima) {
  for (int trial = 0; trial < 2; ++trial) {
    SamplingOptions o;
    o.temperature = 1.5;
    o.seed = 11;
    if (trial == 0) o.top_k = 1;
    if (trial == 1) o.top_p = 1e-9;
    Sampler s(o);
    for (int i = 0; i < 50; ++i) {
      ASSERT_OK_AND_ASSIGN(SampledToken t, s.Sample(Logits({0, 4, 1, 4, 4})));
      EXPECT_EQ(t.id, 1) << "trial " << trial;
    }
  }
}

TEST(SamplerTest, NeverPicksMinusInfinity) {
  SamplingOptions o;
  o.temperature = 5;
  o.seed = 3;
  Sampler s(o);
  for (int i = 0; i < 200; ++i) {
    ASSERT_OK_AND_ASSIGN(SampledToken t, s.Sample(Logits({-INFINITY, 0, -INFINITY, 0.5f})));
    EXPECT_TRUE(t.id == 1 || t.id == 3) << t.id;
  }
}

TEST(SamplerTest, RejectsBadInput) {
  Sampler s(SamplingOptions{});
  // Non-finite logits are the model's fault, never the caller's: Internal.
  EXPECT_THAT(s.Sample(Logits({1, std::nanf(""), 2})),
              StatusIs(absl::StatusCode::kInternal, ::testing::HasSubstr("logit 1 is nan")));
  EXPECT_THAT(s.Sample(Logits({1, INFINITY})), StatusIs(absl::StatusCode::kInternal));
  EXPECT_THAT(s.Sample(Logits({-INFINITY, -INFINITY})), StatusIs(absl::StatusCode::kInternal));
  EXPECT_THAT(s.Sample(at::zeros({2, 3})), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(s.Sample(at::zeros({3}, at::kDouble)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(s.Sample(at::Tensor()), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(s.Sample(at::zeros({0})), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(SamplerTest, AcceptsNonContiguousRows) {
  SamplingOptions o;
  o.temperature = 0;
  Sampler s(o);
  at::Tensor m = at::tensor({0.f, 9.f, 1.f, 2.f, 3.f, 4.f}).view({3, 2});  // column 1 = 9, 2, 4
  ASSERT_OK_AND_ASSIGN(SampledToken t, s.Sample(m.select(1, 1)));
  EXPECT_EQ(t.id, 0);
}

TEST(SamplerTest, SeedReproducesAndDiffers) {
  auto draw = [](std::optional<uint64_t> seed, uint64_t* used) {
    SamplingOptions o;
    o.seed = seed;
    Sampler s(o);
    *used = s.seed();
    std::vector<int32_t> ids;
    const at::Tensor logits = at::zeros({1000});
    for (int i = 0; i < 20; ++i) ids.push_back(s.Sample(logits).value().id);
    return ids;
  };
  uint64_t a_seed, b_seed, c_seed, d_seed, e_seed;
  const auto a = draw(5, &a_seed);
  EXPECT_EQ(a_seed, 5u);
  EXPECT_EQ(draw(5, &b_seed), a);
  EXPECT_NE(draw(6, &c_seed), a);
  // Unseeded samplers draw their own seeds, and reusing a drawn seed reproduces the tokens.
  const auto d = draw(std::nullopt, &d_seed);
  const auto e = draw(std::nullopt, &e_seed);
  EXPECT_NE(d_seed, e_seed);
  EXPECT_NE(d, e);
  EXPECT_EQ(draw(d_seed, &b_seed), d);
}

// Pearson's chi-square statistic of `counts` against probabilities `p` (zero-probability cells
// must have zero counts).
double ChiSquare(const std::vector<int>& counts, const std::vector<double>& p, int n) {
  double chi2 = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " has probability 0";
      continue;
    }
    const double expected = p[i] * n;
    chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
  }
  return chi2;
}

// Closed form of the sampling distribution: softmax(logits / T) restricted to the top_k (exactly
// k, lower id first among ties), then to the nucleus of mass top_p, renormalised.
std::vector<double> ExpectedDistribution(const std::vector<float>& logits, double t, int top_k,
                                         double top_p) {
  const size_t n = logits.size();
  std::vector<double> p(n);
  double z = 0;
  for (size_t i = 0; i < n; ++i) z += p[i] = std::exp(logits[i] / t);
  for (double& v : p) v /= z;
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
  std::vector<bool> keep(n, true);
  if (top_k > 0) {
    for (size_t r = top_k; r < n; ++r) keep[order[r]] = false;
  }
  double kept_mass = 0;
  for (size_t i = 0; i < n; ++i) kept_mass += keep[i] ? p[i] : 0;
  double cum = 0;
  for (size_t r = 0; r < n; ++r) {
    const size_t i = order[r];
    if (!keep[i]) continue;
    if (cum >= top_p * kept_mass) keep[i] = false;
    cum += p[i];
  }
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += keep[i] ? p[i] : 0;
  for (size_t i = 0; i < n; ++i) p[i] = keep[i] ? p[i] / total : 0;
  return p;
}

TEST(SamplerTest, DistributionMatchesSoftmaxOfScaledLogits) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 2.0f, 0.0f};
  struct Case {
    double temperature;
    int top_k;
    double top_p;
    int kept;  // tokens with non-zero probability, a sanity check of the closed form
  };
  // Critical chi-square values at p = 0.001 for the degrees of freedom used below.
  const std::map<int, double> critical = {{1, 10.83}, {2, 13.82}, {3, 16.27}, {4, 18.47},
                                          {5, 20.52}, {6, 22.46}};
  for (const Case& c : {Case{1.0, 0, 1.0, 7}, Case{0.7, 0, 1.0, 7}, Case{2.5, 0, 1.0, 7},
                        Case{1.0, 2, 1.0, 2}, Case{0.8, 3, 1.0, 3}, Case{1.0, 0, 0.8, 3},
                        Case{1.3, 5, 0.9, 4}}) {
    SCOPED_TRACE(::testing::Message() << "T=" << c.temperature << " top_k=" << c.top_k
                                      << " top_p=" << c.top_p);
    const std::vector<double> p =
        ExpectedDistribution(logits, c.temperature, c.top_k, c.top_p);
    ASSERT_EQ(std::count_if(p.begin(), p.end(), [](double v) { return v > 0; }), c.kept);
    SamplingOptions o;
    o.temperature = c.temperature;
    o.top_k = c.top_k;
    o.top_p = c.top_p;
    o.seed = 1234;
    Sampler s(o);
    const at::Tensor t = Logits(logits);
    constexpr int kDraws = 100000;
    std::vector<int> counts(logits.size());
    for (int i = 0; i < kDraws; ++i) ++counts[s.Sample(t).value().id];
    EXPECT_LT(ChiSquare(counts, p, kDraws), critical.at(c.kept - 1));
  }
  // top_k = 2 among tied logits keeps id 1 (2.0) and not id 5 (also 2.0): exactly k, lowest id.
  EXPECT_GT(ExpectedDistribution(logits, 1.0, 2, 1.0)[1], 0);
  EXPECT_EQ(ExpectedDistribution(logits, 1.0, 2, 1.0)[5], 0);
}

TEST(SamplerTest, DistributionTestDetectsAWrongTemperature) {
  // The chi-square bound above is tight enough to tell T=1 from T=0.8: guards against a test that
  // cannot fail.
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 2.0f, 0.0f};
  SamplingOptions o;
  o.temperature = 0.8;
  o.seed = 1234;
  Sampler s(o);
  constexpr int kDraws = 100000;
  std::vector<int> counts(logits.size());
  const at::Tensor t = Logits(logits);
  for (int i = 0; i < kDraws; ++i) ++counts[s.Sample(t).value().id];
  EXPECT_GT(ChiSquare(counts, ExpectedDistribution(logits, 1.0, 0, 1.0), kDraws), 22.46);
}

TEST(SamplerTest, LogprobsAreLogSoftmaxOfRawLogits) {
  const at::Tensor logits = Logits({0.5f, -2.0f, 3.0f, 3.0f, 1.0f});
  const at::Tensor expected = at::log_softmax(logits, 0);
  SamplingOptions o;
  o.temperature = 0.3;  // must not change the reported log-probabilities
  o.seed = 9;
  o.logprobs = true;
  o.top_logprobs = 3;
  Sampler s(o);
  for (int i = 0; i < 20; ++i) {
    ASSERT_OK_AND_ASSIGN(SampledToken t, s.Sample(logits));
    EXPECT_NEAR(t.logprob, expected[t.id].item<float>(), 1e-6);
    ASSERT_EQ(t.top_logprobs.size(), 3u);
    EXPECT_EQ(t.top_logprobs[0].id, 2);
    EXPECT_EQ(t.top_logprobs[1].id, 3);
    EXPECT_EQ(t.top_logprobs[2].id, 4);
    for (const TokenLogprob& lp : t.top_logprobs) {
      EXPECT_NEAR(lp.logprob, expected[lp.id].item<float>(), 1e-6);
    }
  }
}

// ---------------------------------------------------------------- StopMatcher

// Pushes `pieces`, then flushes; returns everything emitted.
std::string PushAll(StopMatcher* m, const std::vector<std::string>& pieces,
                std::vector<std::string>* emitted = nullptr) {
  std::string all;
  for (const std::string& p : pieces) {
    std::string out = m->Push(p);
    if (emitted) emitted->push_back(out);
    all += out;
  }
  return all + m->Flush();
}

TEST(StopMatcherTest, PassesTextThroughWithoutStopStrings) {
  StopMatcher m({});
  std::vector<std::string> emitted;
  EXPECT_EQ(PushAll(&m, {"Hello", ", ", "world"}, &emitted), "Hello, world");
  EXPECT_THAT(emitted, ElementsAre("Hello", ", ", "world"));
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcherTest, StopStringSplitAcrossPieces) {
  StopMatcher m({"STOP"});
  std::vector<std::string> emitted;
  EXPECT_EQ(PushAll(&m, {"abc ST", "O", "P and more", "even more"}, &emitted), "abc ");
  EXPECT_THAT(emitted, ElementsAre("abc ", "", "", ""));
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.matched(), "STOP");
}

TEST(StopMatcherTest, FalsePartialMatchIsReleased) {
  StopMatcher m({"STOP"});
  std::vector<std::string> emitted;
  EXPECT_EQ(PushAll(&m, {"go ST", "ART now"}, &emitted), "go START now");
  EXPECT_THAT(emitted, ElementsAre("go ", "START now"));
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.matched(), "");
}

TEST(StopMatcherTest, HeldBackPrefixComesOutOnFlush) {
  StopMatcher m({"\n\n"});
  EXPECT_EQ(m.Push("line\n"), "line");
  EXPECT_EQ(m.Flush(), "\n");
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcherTest, OverlappingPrefixes) {
  StopMatcher m({"aab"});
  std::vector<std::string> emitted;
  EXPECT_EQ(PushAll(&m, {"a", "a", "a", "b", "c"}, &emitted), "a");
  EXPECT_THAT(emitted, ElementsAre("", "", "a", "", ""));
  EXPECT_TRUE(m.stopped());
}

TEST(StopMatcherTest, FirstCompletedStopWins) {
  StopMatcher a({"world", "lo"});
  EXPECT_EQ(PushAll(&a, {"hello world"}), "hel");
  EXPECT_EQ(a.matched(), "lo");
  // "abcd" starts first but "bc" completes first, in one piece or byte by byte.
  StopMatcher b({"abcd", "bc"});
  EXPECT_EQ(PushAll(&b, {"xabcd"}), "xa");
  EXPECT_EQ(b.matched(), "bc");
  StopMatcher c({"abcd", "bc"});
  EXPECT_EQ(PushAll(&c, {"x", "a", "b", "c", "d"}), "xa");
  // Ending at the same byte: the longer one.
  StopMatcher d({"bc", "abc"});
  EXPECT_EQ(PushAll(&d, {"xab", "c"}), "x");
  EXPECT_EQ(d.matched(), "abc");
}

TEST(StopMatcherTest, Utf8StopString) {
  StopMatcher m({"é!"});
  std::vector<std::string> emitted;
  EXPECT_EQ(PushAll(&m, {"caf", "é", "! yes"}, &emitted), "caf");
  EXPECT_THAT(emitted, ElementsAre("caf", "", ""));
}

TEST(StopMatcherTest, NothingAfterStop) {
  StopMatcher m({"x"});
  EXPECT_EQ(m.Push("axb"), "a");
  EXPECT_EQ(m.Push("more"), "");
  EXPECT_EQ(m.Flush(), "");
}

// Any split of a text into pieces gives the same output as a direct search of the whole text.
TEST(StopMatcherTest, RandomSplitsAgreeWithWholeTextSearch) {
  std::mt19937 rng(42);
  auto random_string = [&](int max_len) {
    std::string s(1 + rng() % max_len, 'a');
    for (char& c : s) c = static_cast<char>('a' + rng() % 3);
    return s;
  };
  int stopped = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const std::string text = random_string(30);
    std::vector<std::string> stops;
    for (int i = 0, n = 1 + rng() % 3; i < n; ++i) stops.push_back(random_string(4));
    // Expected: the occurrence with the smallest end, the longest among equal ends.
    size_t best_end = std::string::npos, best_pos = 0;
    for (const std::string& s : stops) {
      const size_t pos = text.find(s);
      if (pos == std::string::npos) continue;
      if (pos + s.size() < best_end || (pos + s.size() == best_end && pos < best_pos)) {
        best_end = pos + s.size();
        best_pos = pos;
      }
    }
    const std::string expected =
        best_end == std::string::npos ? text : text.substr(0, best_pos);
    std::vector<std::string> pieces;
    for (size_t i = 0; i < text.size();) {
      const size_t len = std::min<size_t>(rng() % 5, text.size() - i);  // empty pieces too
      pieces.push_back(text.substr(i, len));
      i += len;
    }
    StopMatcher m(stops);
    std::vector<std::string> emitted;
    ASSERT_EQ(PushAll(&m, pieces, &emitted), expected) << "text " << text;
    ASSERT_EQ(m.stopped(), best_end != std::string::npos);
    stopped += m.stopped();
    // Emitted text never contains a whole stop string.
    std::string so_far;
    for (const std::string& e : emitted) so_far += e;
    for (const std::string& s : stops) ASSERT_EQ(so_far.find(s), std::string::npos);
  }
  EXPECT_GT(stopped, 300);  // both outcomes are exercised
  EXPECT_LT(stopped, 2700);
}

}  // namespace
}  // namespace loraserve::core
