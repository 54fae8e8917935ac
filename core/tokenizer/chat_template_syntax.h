// Internal to core/tokenizer: the parsed form of a chat template (chat_template.h) shared by its
// parser (chat_template_syntax.cc) and its renderer (chat_template.cc).
#ifndef LORASERVE_CORE_TOKENIZER_CHAT_TEMPLATE_SYNTAX_H_
#define LORASERVE_CORE_TOKENIZER_CHAT_TEMPLATE_SYNTAX_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/io/json_file.h"
#include "core/tokenizer/chat_template.h"

namespace loraserve::core::chat_template_internal {

absl::Status Bad(const std::string& what);  // InvalidArgument("chat template: " + what)
inline Json Undefined() { return Json(Json::value_t::discarded); }
inline bool IsUndefined(const Json& v) { return v.is_discarded(); }

struct Expr;
using ExprPtr = std::shared_ptr<const Expr>;
struct Expr {
  enum Kind { kLit, kName, kAttr, kItem, kSlice, kCall, kFilter, kTest, kNeg, kBinary, kAnd, kOr, kNot, kCond, kList, kDict };
  Kind kind;
  Json value;          // kLit
  std::string name;    // kName, kAttr, kFilter, kTest, kBinary (operator)
  std::vector<ExprPtr> args;  // operands; kCall: callee then arguments; kFilter/kTest: subject then arguments
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  bool negate = false;  // kTest: `is not`
};

using NodePtr = std::shared_ptr<const ChatTemplate::Node>;

// The template's top-level nodes (InvalidArgument on a syntax error).
absl::StatusOr<std::vector<NodePtr>> ParseTemplate(const std::string& source);

}  // namespace loraserve::core::chat_template_internal

namespace loraserve::core {

struct ChatTemplate::Node {
  enum Kind { kText, kOutput, kIf, kFor, kSet } kind;
  std::string text;                                        // kText
  chat_template_internal::ExprPtr expr;                    // kOutput, kFor (iterable), kSet (value)
  std::vector<std::pair<chat_template_internal::ExprPtr, std::vector<chat_template_internal::NodePtr>>> branches;  // kIf (null cond = else)
  std::vector<std::string> targets;                        // kFor loop variables; kSet: name [, attr]
  chat_template_internal::ExprPtr filter;                  // kFor `if`
  std::vector<chat_template_internal::NodePtr> body;       // kFor
};

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_TOKENIZER_CHAT_TEMPLATE_SYNTAX_H_
