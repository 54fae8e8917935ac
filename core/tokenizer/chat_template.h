// Hugging Face chat templates: the Jinja2 subset that real `chat_template`s use, rendered as
// transformers' apply_chat_template does (trim_blocks and lstrip_blocks on).
//
// Supported: text, {{ expr }}, {% if/elif/else/endif %}, {% for x in xs [if cond] %} (with
// `loop.index`, `index0`, `first`, `last`, `length`, `revindex`; `k, v` unpacking),
// {% set x = expr %}, {% set ns.attr = expr %} with namespace(...), {# comments #}, `-` whitespace
// control; literals (strings, numbers, true/false/none, lists, dicts), `.attr`, `[key]`,
// `[a:b]` slices, + - * / // % ~, comparisons, and/or/not, in / not in, `a if c else b`;
// tests defined, undefined, none, string, number, integer, boolean, mapping, sequence,
// iterable, even, odd; filters trim, upper, lower, capitalize, title, length/count, tojson, string,
// int, float, first, last, join, default/d, replace, list, items, reverse, safe; string methods
// strip, lstrip, rstrip, startswith, endswith, split, upper, lower, replace, title; dict get,
// items, keys, values; functions raise_exception(msg), namespace(...), range(n). Anything else
// is an InvalidArgument at Parse (unknown statement) or at Render (unknown filter, test, method).
#ifndef LORASERVE_CORE_TOKENIZER_CHAT_TEMPLATE_H_
#define LORASERVE_CORE_TOKENIZER_CHAT_TEMPLATE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/io/json_file.h"

namespace loraserve::core {

class ChatTemplate {
 public:
  // InvalidArgument naming the position of a syntax error.
  static absl::StatusOr<ChatTemplate> Parse(const std::string& source);
  // Renders with `context` as the variables (e.g. messages, add_generation_prompt, bos_token,
  // eos_token). raise_exception(msg) in the template gives InvalidArgument(msg).
  absl::StatusOr<std::string> Render(const Json& context) const;

  struct Node;

 private:
  std::shared_ptr<const Node> root_;
};

// A model directory's chat template: chat_template.jinja, else tokenizer_config.json's
// "chat_template" (a string, or a list of {name, template} from which "default" is taken), with
// its bos_token / eos_token strings. NotFound when the model has none; InvalidArgument when the
// file or the template is malformed.
struct ModelChatTemplate {
  ChatTemplate chat_template;
  std::string bos_token;
  std::string eos_token;
};
absl::StatusOr<ModelChatTemplate> LoadModelChatTemplate(const std::string& model_dir);

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_TOKENIZER_CHAT_TEMPLATE_H_
