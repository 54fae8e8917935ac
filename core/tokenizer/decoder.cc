// The decoder stage: parse and run the chain (see decoder.h).
#include "core/tokenizer/decoder.h"

#include <cstdint>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/tokenizer/utf8.h"

namespace loraserve::core::tokenizer_internal {
namespace {

std::string Concat(const std::vector<std::string>& tokens) {
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

// HF's <0xNN> byte tokens.
bool ParseByteToken(std::string_view t, uint8_t* byte) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return false;
  int value = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = t[i];
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return false;
    }
    value = value * 16 + d;
  }
  *byte = static_cast<uint8_t>(value);
  return true;
}

// Strip with per-token semantics (HF Strip::decode_chain on one token).
std::string StripToken(const std::string& t, std::string_view ch, size_t start, size_t stop) {
  size_t b = 0, e = t.size();
  for (size_t k = 0; k < start && b < e && t.compare(b, ch.size(), ch) == 0; ++k) b += ch.size();
  for (size_t k = 0; k < stop && e >= b + ch.size() && t.compare(e - ch.size(), ch.size(), ch) == 0;
       ++k) {
    e -= ch.size();
  }
  return t.substr(b, e - b);
}

std::string ReplaceMetaspace(std::string_view t, std::string_view replacement, bool drop) {
  return ReplaceAll(t, replacement, drop ? "" : " ");
}

std::vector<std::string> RunDecodeStep(const DecodeStep& step, DecodeStepState& st,
                                       std::vector<std::string> tokens, bool final) {
  using Kind = DecodeStep::Kind;
  switch (step.kind) {
    case Kind::kReplace: {
      if (!step.fused_input) {
        for (std::string& t : tokens) t = ReplaceAll(t, step.pattern, step.content);
        return tokens;
      }
      // One logical token arriving in parts: scan left to right as a whole-token replace would,
      // and stop where the rest could still turn into a match.
      std::string text = std::move(st.carry) + Concat(tokens);
      st.carry.clear();
      std::string out;
      const std::string& pat = step.pattern;
      for (size_t i = 0; i < text.size();) {
        if (text.compare(i, pat.size(), pat) == 0) {
          out += step.content;
          i += pat.size();
          continue;
        }
        if (!final && text.size() - i < pat.size() &&
            pat.compare(0, text.size() - i, text, i, std::string::npos) == 0) {
          st.carry = text.substr(i);
          break;
        }
        const size_t len = CharLen(text, i);
        out.append(text, i, len);
        i += len;
      }
      return {std::move(out)};
    }
    case Kind::kByteFallback: {
      // A run of byte tokens becomes its string if the whole run is valid UTF-8, else one U+FFFD
      // per byte. A run at the end is undecided until a non-byte token (or the end) arrives.
      std::vector<std::string> out;
      const auto flush = [&] {
        if (st.carry.empty()) return;
        if (IsValidUtf8(st.carry)) {
          out.push_back(st.carry);
        } else {
          for (size_t k = 0; k < st.carry.size(); ++k) out.emplace_back(kReplacementChar);
        }
        st.carry.clear();
      };
      for (std::string& t : tokens) {
        uint8_t byte;
        if (ParseByteToken(t, &byte)) {
          st.carry.push_back(static_cast<char>(byte));
          continue;
        }
        flush();
        out.push_back(std::move(t));
      }
      if (final) flush();
      return out;
    }
    case Kind::kFuse:
      return {Concat(tokens)};
    case Kind::kStrip: {
      if (!step.fused_input) {
        for (std::string& t : tokens) t = StripToken(t, step.content, step.start, step.stop);
        return tokens;
      }
      std::string text = Concat(tokens);
      size_t b = 0;
      while (st.left_remaining > 0 && b < text.size()) {
        if (text.compare(b, step.content.size(), step.content) == 0) {
          b += step.content.size();
          --st.left_remaining;
        } else {
          st.left_remaining = 0;
        }
      }
      text.erase(0, b);
      if (step.stop == 0) return {std::move(text)};
      // Trailing content characters are stripped only if nothing else follows: hold back up to
      // `stop` of them.
      text = std::move(st.carry) + text;
      st.carry.clear();
      size_t e = text.size();
      for (size_t k = 0;
           k < step.stop && e >= step.content.size() &&
           text.compare(e - step.content.size(), step.content.size(), step.content) == 0;
           ++k) {
        e -= step.content.size();
      }
      if (!final) st.carry = text.substr(e);
      text.resize(e);
      return {std::move(text)};
    }
    case Kind::kByteLevel: {
      // Characters back to bytes (a token with any unmapped character, e.g. an added token with a
      // space, keeps its raw bytes), then lossy UTF-8 over all of them. An incomplete UTF-8
      // sequence at the end waits for more bytes.
      const ByteLevelTables& tables = GetByteLevelTables();
      for (const std::string& t : tokens) {
        std::string bytes;
        bool all_mapped = true;
        for (size_t i = 0; i < t.size();) {
          const char32_t cp = CodepointAt(t, i);
          if (cp >= tables.char_to_byte.size() || tables.char_to_byte[cp] < 0) {
            all_mapped = false;
            break;
          }
          bytes.push_back(static_cast<char>(tables.char_to_byte[cp]));
          i += CharLen(t, i);
        }
        st.carry += all_mapped ? bytes : t;
      }
      std::string out;
      const size_t used = AppendLossyUtf8(st.carry, final, &out);
      st.carry.erase(0, used);
      return {std::move(out)};
    }
    case Kind::kMetaspace: {
      if (step.fused_input) {  // Every part belongs to token 0.
        for (std::string& t : tokens) {
          t = ReplaceMetaspace(t, step.content, step.metaspace_strip_first);
        }
        return tokens;
      }
      for (std::string& t : tokens) {
        // HF drops every replacement character of the first token, not just a leading one.
        t = ReplaceMetaspace(t, step.content, step.metaspace_strip_first && st.tokens_seen == 0);
        ++st.tokens_seen;
      }
      return tokens;
    }
    case Kind::kJoinWithSpace:
      for (std::string& t : tokens) {
        if (st.tokens_seen++ > 0) t.insert(0, " ");
      }
      return tokens;
  }
  return tokens;
}

}  // namespace

std::vector<DecodeStepState> InitialDecodeStates(const std::vector<DecodeStep>& chain) {
  std::vector<DecodeStepState> states(chain.size());
  for (size_t i = 0; i < chain.size(); ++i) states[i].left_remaining = chain[i].start;
  return states;
}

void RunDecodeChain(const std::vector<DecodeStep>& chain, std::vector<DecodeStepState>& states,
                    std::vector<std::string> tokens, bool final, std::string* out) {
  for (size_t i = 0; i < chain.size(); ++i) {
    tokens = RunDecodeStep(chain[i], states[i], std::move(tokens), final);
  }
  for (const std::string& t : tokens) *out += t;
}

namespace {

// One decoder that is not a Sequence.
absl::Status ParseDecoderStep(const JsonReader& r, const Json& j, const std::string& type,
                              const std::string& where, std::vector<DecodeStep>* chain,
                              bool* fused) {
  DecodeStep step;
  step.fused_input = *fused;
  using Kind = DecodeStep::Kind;
  if (type == "Replace") {
    step.kind = Kind::kReplace;
    LORASERVE_ASSIGN_OR_RETURN(const JsonReader::Pattern p, r.PatternField(j, where));
    if (p.is_regex) return r.Error(where, "a Regex pattern is not supported in the decoder");
    if (p.text.empty()) return r.Error(where, "empty pattern");
    step.pattern = p.text;
    LORASERVE_ASSIGN_OR_RETURN(step.content, r.String(j, "content", where, {}));
  } else if (type == "ByteFallback") {
    step.kind = Kind::kByteFallback;
    if (*fused) return r.Error(where, "ByteFallback after Fuse/ByteLevel is not supported");
  } else if (type == "Fuse") {
    step.kind = Kind::kFuse;
    *fused = true;
  } else if (type == "Strip") {
    step.kind = Kind::kStrip;
    LORASERVE_ASSIGN_OR_RETURN(step.content, SingleChar(r, j, "content", where, " "));
    LORASERVE_ASSIGN_OR_RETURN(const int64_t start, r.Int(j, "start", where, 0));
    LORASERVE_ASSIGN_OR_RETURN(const int64_t stop, r.Int(j, "stop", where, 0));
    if (start < 0 || stop < 0) return r.Error(where, "start/stop must not be negative");
    step.start = static_cast<size_t>(start);
    step.stop = static_cast<size_t>(stop);
  } else if (type == "ByteLevel") {
    step.kind = Kind::kByteLevel;
    if (*fused) return r.Error(where, "ByteLevel after Fuse/ByteLevel is not supported");
    *fused = true;
  } else if (type == "Metaspace") {
    step.kind = Kind::kMetaspace;
    LORASERVE_ASSIGN_OR_RETURN(step.content, SingleChar(r, j, "replacement", where, "\u2581"));
    LORASERVE_ASSIGN_OR_RETURN(const PrependScheme scheme, ParsePrependScheme(r, j, where));
    step.metaspace_strip_first = scheme != PrependScheme::kNever;
  } else {
    return r.Error("decoder", absl::StrCat("unsupported decoder type \"", type,
                                           "\" (supported: Sequence, Replace, ByteFallback, Fuse, "
                                           "Strip, ByteLevel, Metaspace)"));
  }
  chain->push_back(std::move(step));
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseDecoder(const JsonReader& r, const Json& j, std::vector<DecodeStep>* chain,
                          bool* fused) {
  return ParseStageOrSequence(r, j, "decoder", "decoders", /*null_ok=*/false, ParseDecoderStep,
                              chain, fused);
}

}  // namespace loraserve::core::tokenizer_internal
