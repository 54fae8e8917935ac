// The BPE model stage: parse and merge (see bpe_model.h).
#include "core/tokenizer/bpe_model.h"

#include <algorithm>
#include <limits>
#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/status_macros.h"
#include "core/tokenizer/utf8.h"

namespace loraserve::core::tokenizer_internal {

void BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges) {
    const auto it = vocab.find(std::string(word));
    if (it != vocab.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  struct Symbol {
    int32_t id;
    int prev, next;
    bool removed;
  };
  std::vector<Symbol> symbols;
  const auto add = [&symbols](int32_t id) {
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({id, index - 1, -1, false});
    if (index > 0) symbols[index - 1].next = index;
  };
  int32_t pending_unk = -1;  // An unk not yet added: fuse_unk extends it over a run.
  std::string key;
  for (size_t i = 0; i < word.size();) {
    const size_t len = CharLen(word, i);
    key.clear();
    if (i > 0) key += continuing_subword_prefix;
    key.append(word.substr(i, len));
    if (i + len == word.size()) key += end_of_word_suffix;
    i += len;
    const auto it = vocab.find(key);
    if (it != vocab.end()) {
      if (pending_unk >= 0) add(pending_unk);
      pending_unk = -1;
      add(it->second);
      continue;
    }
    if (byte_fallback && std::all_of(key.begin(), key.end(), [this](char c) {
          return byte_ids[static_cast<uint8_t>(c)] >= 0;
        })) {
      // As in HF, a pending unk is not flushed first: it lands after these bytes.
      for (const char c : key) add(byte_ids[static_cast<uint8_t>(c)]);
      continue;
    }
    if (unk_id < 0) continue;  // No unk token: HF drops the character.
    if (pending_unk >= 0 && !fuse_unk) add(pending_unk);
    pending_unk = unk_id;
  }
  if (pending_unk >= 0) add(pending_unk);

  // Lowest rank first, then leftmost. As in HF, a queued entry is still valid when the pair now
  // at its position merges to the same id, even if that pair's own rank differs.
  struct Merge {
    int32_t rank;
    int pos;
    int32_t new_id;
    bool operator<(const Merge& o) const {  // priority_queue pops the largest.
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Merge> queue;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const auto* m = FindMerge(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->first, static_cast<int>(i), m->second});
    }
  }
  while (!queue.empty()) {
    const Merge top = queue.top();
    queue.pop();
    Symbol& cur = symbols[top.pos];
    if (cur.removed || cur.next < 0) continue;
    const int next_pos = cur.next;
    const Symbol right = symbols[next_pos];
    const auto* m = FindMerge(cur.id, right.id);
    if (m == nullptr || m->second != top.new_id) continue;  // Stale entry.
    cur.id = top.new_id;
    cur.next = right.next;
    symbols[next_pos].removed = true;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (cur.prev >= 0) {
      if (const auto* pm = FindMerge(symbols[cur.prev].id, cur.id)) {
        queue.push({pm->first, cur.prev, pm->second});
      }
    }
    if (cur.next >= 0) {
      if (const auto* nm = FindMerge(cur.id, symbols[cur.next].id)) {
        queue.push({nm->first, top.pos, nm->second});
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (!s.removed) ids->push_back(s.id);
  }
}

absl::Status ParseBpeModel(const JsonReader& r, const Json& j, BpeModel* m) {
  const std::string where = "model";
  const Json* vocab = JsonReader::Find(j, "vocab");
  if (vocab == nullptr || !vocab->is_object()) return r.Error(where, "\"vocab\" must be an object");
  int32_t max_id = -1;
  m->vocab.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0 ||
        it->get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return r.Error(where, absl::StrCat("vocab entry \"", it.key(), "\" has no valid id"));
    }
    const auto id = static_cast<int32_t>(it->get<int64_t>());
    m->vocab[it.key()] = id;
    max_id = std::max(max_id, id);
  }
  m->id_to_token.assign(static_cast<size_t>(max_id + 1), std::string());
  m->has_id.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : m->vocab) {
    m->id_to_token[id] = token;
    m->has_id[id] = true;
  }

  if (const Json* d = JsonReader::Find(j, "dropout");
      d != nullptr && (!d->is_number() || d->get<double>() != 0.0)) {
    return r.Error(where, "BPE dropout is not supported (it makes encoding random)");
  }
  LORASERVE_ASSIGN_OR_RETURN(m->fuse_unk, r.Bool(j, "fuse_unk", where, false));
  LORASERVE_ASSIGN_OR_RETURN(m->byte_fallback, r.Bool(j, "byte_fallback", where, false));
  LORASERVE_ASSIGN_OR_RETURN(m->ignore_merges, r.Bool(j, "ignore_merges", where, false));
  LORASERVE_ASSIGN_OR_RETURN(m->continuing_subword_prefix,
                             r.String(j, "continuing_subword_prefix", where, ""));
  LORASERVE_ASSIGN_OR_RETURN(m->end_of_word_suffix, r.String(j, "end_of_word_suffix", where, ""));
  if (JsonReader::Find(j, "unk_token") != nullptr) {
    LORASERVE_ASSIGN_OR_RETURN(const std::string unk, r.String(j, "unk_token", where, {}));
    const auto it = m->vocab.find(unk);
    if (it == m->vocab.end()) {
      return r.Error(where, absl::StrCat("unk_token \"", unk, "\" is not in the vocab"));
    }
    m->unk_id = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = m->vocab.find(absl::StrFormat("<0x%02X>", b));
    m->byte_ids[b] = it == m->vocab.end() ? -1 : it->second;
  }

  const Json* merges = JsonReader::Find(j, "merges");
  if (merges == nullptr) return absl::OkStatus();
  if (!merges->is_array()) return r.Error(where, "\"merges\" must be an array");
  m->merges.reserve(merges->size());
  const auto lookup = [&](const std::string& token, size_t rank) -> absl::StatusOr<int32_t> {
    const auto it = m->vocab.find(token);
    if (it == m->vocab.end()) {
      return r.Error(where, absl::StrCat("merge ", rank, ": \"", token, "\" is not in the vocab"));
    }
    return it->second;
  };
  const size_t prefix_len = m->continuing_subword_prefix.size();
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    const Json& e = (*merges)[rank];
    std::string a, b;
    if (e.is_string()) {
      // Classic "a b" form: exactly one space (no merge part contains a space).
      const std::string& s = e.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        return r.Error(where, absl::StrCat("merge ", rank, " \"", s, "\" is not \"a b\""));
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      return r.Error(where, absl::StrCat("merge ", rank, " must be \"a b\" or [\"a\", \"b\"]"));
    }
    LORASERVE_ASSIGN_OR_RETURN(const int32_t a_id, lookup(a, rank));
    LORASERVE_ASSIGN_OR_RETURN(const int32_t b_id, lookup(b, rank));
    // As HF: the merged token drops the continuing-subword prefix of the right part.
    LORASERVE_ASSIGN_OR_RETURN(const int32_t new_id,
                               lookup(a + b.substr(std::min(prefix_len, b.size())), rank));
    // A repeated pair keeps its last rank, as HF's map does.
    m->merges[BpeModel::PairKey(a_id, b_id)] = {static_cast<int32_t>(rank), new_id};
  }
  return absl::OkStatus();
}

}  // namespace loraserve::core::tokenizer_internal
