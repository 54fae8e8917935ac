#include "core/tokenizer/chat_template.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "core/base/status_macros.h"
#include "core/io/file_util.h"

namespace loraserve::core {
namespace {

absl::Status Bad(const std::string& what) { return absl::InvalidArgumentError("chat template: " + what); }
Json Undefined() { return Json(Json::value_t::discarded); }
bool IsUndefined(const Json& v) { return v.is_discarded(); }

// ---- expressions --------------------------------------------------------------------------

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

struct Token {
  enum Kind { kName, kString, kNumber, kOp, kEnd } kind;
  std::string text;
  Json number;
};

absl::StatusOr<std::vector<Token>> Lex(const std::string& s) {
  std::vector<Token> out;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (absl::ascii_isspace(static_cast<unsigned char>(c))) { ++i; continue; }
    if (absl::ascii_isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (absl::ascii_isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      out.push_back({Token::kName, s.substr(i, j - i), {}});
      i = j;
    } else if (absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      bool real = false;
      while (j < s.size() && (absl::ascii_isdigit(static_cast<unsigned char>(s[j])) ||
                              (s[j] == '.' && j + 1 < s.size() && absl::ascii_isdigit(static_cast<unsigned char>(s[j + 1]))))) {
        real |= s[j] == '.';
        ++j;
      }
      const std::string t = s.substr(i, j - i);
      out.push_back({Token::kNumber, t, real ? Json(std::stod(t)) : Json(std::stoll(t))});
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string v;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; ++j) {
        if (s[j] == '\\' && j + 1 < s.size()) {
          const char e = s[++j];
          v += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
        } else {
          v += s[j];
        }
      }
      if (j >= s.size()) return Bad("unterminated string in \"" + s + "\"");
      out.push_back({Token::kString, v, {}});
      i = j + 1;
    } else {
      static const char* const kTwo[] = {"==", "!=", "<=", ">=", "//", "**"};
      std::string op(1, c);
      for (const char* t : kTwo) {
        if (s.compare(i, 2, t) == 0) op = t;
      }
      if (std::string("+-*/%~<>()[]{}.,:|=!").find(c) == std::string::npos) {
        return Bad(absl::StrCat("unexpected character '", std::string(1, c), "' in \"", s, "\""));
      }
      out.push_back({Token::kOp, op, {}});
      i += op.size();
    }
  }
  out.push_back({Token::kEnd, "", {}});
  return out;
}

class ExprParser {
 public:
  explicit ExprParser(std::vector<Token> t) : t_(std::move(t)) {}
  absl::StatusOr<ExprPtr> Parse() { return Cond(); }
  bool AtEnd() const { return t_[p_].kind == Token::kEnd; }
  bool PeekName(const char* n) const { return t_[p_].kind == Token::kName && t_[p_].text == n; }
  bool PeekOp(const char* o) const { return t_[p_].kind == Token::kOp && t_[p_].text == o; }
  bool EatName(const char* n) { return PeekName(n) ? (++p_, true) : false; }
  bool EatOp(const char* o) { return PeekOp(o) ? (++p_, true) : false; }
  absl::StatusOr<std::string> Name() {
    if (t_[p_].kind != Token::kName) return Bad(absl::StrCat("expected a name, found \"", t_[p_].text, "\""));
    return t_[p_++].text;
  }
  absl::Status Expect(const char* o) {
    return EatOp(o) ? absl::OkStatus() : Bad(absl::StrCat("expected '", o, "', found \"", t_[p_].text, "\""));
  }
  absl::StatusOr<ExprPtr> Cond() {
    LORASERVE_ASSIGN_OR_RETURN(ExprPtr a, Or());
    if (!EatName("if")) return a;
    LORASERVE_ASSIGN_OR_RETURN(ExprPtr cond, Or());
    ExprPtr b = Lit(Undefined());
    if (EatName("else")) {
      LORASERVE_ASSIGN_OR_RETURN(b, Cond());
    }
    return Make(Expr::kCond, {cond, a, b});
  }

 private:
  static ExprPtr Lit(Json v) { auto e = std::make_shared<Expr>(); e->kind = Expr::kLit; e->value = std::move(v); return e; }
  static ExprPtr Make(Expr::Kind k, std::vector<ExprPtr> args, std::string name = "") {
    auto e = std::make_shared<Expr>();
    e->kind = k;
    e->args = std::move(args);
    e->name = std::move(name);
    return e;
  }
  absl::StatusOr<ExprPtr> Or() {
    LORASERVE_ASSIGN_OR_RETURN(ExprPtr a, And());
    while (EatName("or")) { LORASERVE_ASSIGN_OR_RETURN(ExprPtr b, And()); a = Make(Expr::kOr, {a, b}); }
    return a;
  }
  absl::StatusOr<ExprPtr> And() {
    LORASERVE_ASSIGN_OR_RETURN(ExprPtr a, Not());
    while (EatName("and")) { LORASERVE_ASSIGN_OR_RETURN(ExprPtr b, Not()); a = Make(Expr::kAnd, {a, b}); }
    return a;
  }
  absl::StatusOr<ExprPtr> Not() {
    if (EatName("not")) { LORASERVE_ASSIGN_OR_RETURN(ExprPtr a, Not()); return Make(Expr::kNot, {a}); }
    return Compare();
  }
  absl::StatusOr<ExprPtr> Compare() {
    LORASERVE_ASSIGN_OR_RETURN(ExprPtr a, Concat());
    for (;;) {
      std::string op;
      for (const char* o : {"==", "!=", "<=", ">=", "<", ">"}) {
        if (op.empty() && EatOp(o)) op = o;
      }
      if (op.empty() && EatName("in")) op = "in";
      if (op.empty() && PeekName("not") && t_[p_ + 1].kind == Token::kName && t_[p_ + 1].text == "in") {
        p_ += 2;
        op = "not in";
      }
      if (op.empty() && EatName("is")) {
        auto test = std::make_shared<Expr>();
        test->kind = Expr::kTest;
        test->negate = EatName("not");
        LORASERVE_ASSIGN_OR_RETURN(test->name, Name());
        test->args.push_back(a);
        if (t_[p_].kind == Token::kNumber || t_[p_].kind == Token::kString) {
          LORASERVE_ASSIGN_OR_RETURN(ExprPtr arg, Primary());
          test->args.push_back(arg);
        }
        a = test;
        continue;
      }
      if (op.empty()) return a;
      LORASERVE_ASSIGN_OR_RETURN(ExprPtr b, Concat());
      a = Make(Expr::kBinary, {a, b}, op);
    }
  }
  absl::StatusOr<ExprPtr> Concat() {
    LORASERVE_ASSIGN_OR_RETURN(ExprPtr a, Add());
    while (EatOp("~")) { LORASERVE_ASSIGN_OR_RETURN(ExprPtr b, Add()); a = Make(Expr::kBinary, {a, b}, "~"); }
    return a;
  }
  absl::StatusOr<ExprPtr> Add() {
    LORASERVE_ASSIGN_OR_RETURN(ExprPtr a, Mul());
    for (;;) {
      std::string op = EatOp("+") ? "+" : EatOp("-") ? "-" : "";
      if (op.empty()) return a;
      LORASERVE_ASSIGN_OR_RETURN(ExprPtr b, Mul());
      a = Make(Expr::kBinary, {a, b}, op);
    }
  }
  absl::StatusOr<ExprPtr> Mul() {
    LORASERVE_ASSIGN_OR_RETURN(ExprPtr a, Unary());
    for (;;) {
      std::string op;
      for (const char* o : {"//", "*", "/", "%"}) {
        if (op.empty() && EatOp(o)) op = o;
      }
      if (op.empty()) return a;
      LORASERVE_ASSIGN_OR_RETURN(ExprPtr b, Unary());
      a = Make(Expr::kBinary, {a, b}, op);
    }
  }
  absl::StatusOr<ExprPtr> Unary() {
    if (EatOp("-")) { LORASERVE_ASSIGN_OR_RETURN(ExprPtr a, Unary()); return Make(Expr::kNeg, {a}); }
    return Postfix();
  }
  absl::Status Args(Expr* e) {  // after '(' up to and including ')'; e->args[0] is the callee/subject
    for (bool first = true; !EatOp(")"); first = false) {
      if (!first) {
        LORASERVE_RETURN_IF_ERROR(Expect(","));
      }
      if (t_[p_].kind == Token::kName && t_[p_ + 1].kind == Token::kOp && t_[p_ + 1].text == "=") {
        std::string key = t_[p_].text;
        p_ += 2;
        LORASERVE_ASSIGN_OR_RETURN(ExprPtr v, Cond());
        e->kwargs.emplace_back(key, v);
      } else {
        LORASERVE_ASSIGN_OR_RETURN(ExprPtr v, Cond());
        e->args.push_back(v);
      }
      if (AtEnd()) return Bad("unclosed '('");
    }
    return absl::OkStatus();
  }
  absl::StatusOr<ExprPtr> Postfix() {
    LORASERVE_ASSIGN_OR_RETURN(ExprPtr a, Primary());
    for (;;) {
      if (EatOp(".")) {
        LORASERVE_ASSIGN_OR_RETURN(std::string n, Name());
        a = Make(Expr::kAttr, {a}, n);
      } else if (EatOp("[")) {
        std::vector<ExprPtr> parts(3, nullptr);
        int part = 0;
        bool slice = false;
        while (!EatOp("]")) {
          if (EatOp(":")) { slice = true; if (++part > 2) return Bad("bad slice"); continue; }
          LORASERVE_ASSIGN_OR_RETURN(parts[part], Cond());
          if (AtEnd()) return Bad("unclosed '['");
        }
        if (slice) {
          auto e = std::make_shared<Expr>();
          e->kind = Expr::kSlice;
          e->args = {a, parts[0] ? parts[0] : Lit(nullptr), parts[1] ? parts[1] : Lit(nullptr), parts[2] ? parts[2] : Lit(nullptr)};
          a = e;
        } else {
          if (!parts[0]) return Bad("empty subscript");
          a = Make(Expr::kItem, {a, parts[0]});
        }
      } else if (EatOp("(")) {
        auto e = std::make_shared<Expr>();
        e->kind = Expr::kCall;
        e->args.push_back(a);
        LORASERVE_RETURN_IF_ERROR(Args(e.get()));
        a = e;
      } else if (EatOp("|")) {
        auto e = std::make_shared<Expr>();
        e->kind = Expr::kFilter;
        LORASERVE_ASSIGN_OR_RETURN(e->name, Name());
        e->args.push_back(a);
        if (EatOp("(")) {
          LORASERVE_RETURN_IF_ERROR(Args(e.get()));
        }
        a = e;
      } else {
        return a;
      }
    }
  }
  absl::StatusOr<ExprPtr> Primary() {
    const Token t = t_[p_];
    if (t.kind == Token::kEnd) return Bad("unexpected end of expression");
    ++p_;
    if (t.kind == Token::kString) {
      std::string s = t.text;  // adjacent literals concatenate
      while (t_[p_].kind == Token::kString) s += t_[p_++].text;
      return Lit(s);
    }
    if (t.kind == Token::kNumber) return Lit(t.number);
    if (t.kind == Token::kName) {
      if (t.text == "true" || t.text == "True") return Lit(true);
      if (t.text == "false" || t.text == "False") return Lit(false);
      if (t.text == "none" || t.text == "None") return Lit(nullptr);
      auto e = std::make_shared<Expr>();
      e->kind = Expr::kName;
      e->name = t.text;
      return ExprPtr(e);
    }
    if (t.text == "(") {
      LORASERVE_ASSIGN_OR_RETURN(ExprPtr e, Cond());
      LORASERVE_RETURN_IF_ERROR(Expect(")"));
      return e;
    }
    if (t.text == "[") {
      auto e = std::make_shared<Expr>();
      e->kind = Expr::kList;
      while (!EatOp("]")) {
        if (!e->args.empty()) {
          LORASERVE_RETURN_IF_ERROR(Expect(","));
        }
        if (EatOp("]")) break;
        LORASERVE_ASSIGN_OR_RETURN(ExprPtr v, Cond());
        e->args.push_back(v);
        if (AtEnd()) return Bad("unclosed '['");
      }
      return ExprPtr(e);
    }
    if (t.text == "{") {
      auto e = std::make_shared<Expr>();
      e->kind = Expr::kDict;
      while (!EatOp("}")) {
        if (!e->args.empty()) {
          LORASERVE_RETURN_IF_ERROR(Expect(","));
        }
        if (EatOp("}")) break;
        LORASERVE_ASSIGN_OR_RETURN(ExprPtr k, Cond());
        LORASERVE_RETURN_IF_ERROR(Expect(":"));
        LORASERVE_ASSIGN_OR_RETURN(ExprPtr v, Cond());
        e->args.push_back(k);
        e->args.push_back(v);
        if (AtEnd()) return Bad("unclosed '{'");
      }
      return ExprPtr(e);
    }
    return Bad(absl::StrCat("unexpected \"", t.text, "\""));
  }

  std::vector<Token> t_;
  size_t p_ = 0;
};

absl::StatusOr<ExprPtr> ParseExpr(const std::string& s) {
  LORASERVE_ASSIGN_OR_RETURN(std::vector<Token> tokens, Lex(s));
  ExprParser p(std::move(tokens));
  LORASERVE_ASSIGN_OR_RETURN(ExprPtr e, p.Parse());
  if (!p.AtEnd()) return Bad("trailing tokens in \"" + s + "\"");
  return e;
}

}  // namespace

// ---- template structure -------------------------------------------------------------------

struct ChatTemplate::Node {
  enum Kind { kText, kOutput, kIf, kFor, kSet } kind;
  std::string text;                                        // kText
  ExprPtr expr;                                            // kOutput, kFor (iterable), kSet (value)
  std::vector<std::pair<ExprPtr, std::vector<std::shared_ptr<const Node>>>> branches;  // kIf (null cond = else)
  std::vector<std::string> targets;                        // kFor loop variables; kSet: name [, attr]
  ExprPtr filter;                                          // kFor `if`
  std::vector<std::shared_ptr<const Node>> body;           // kFor
};

namespace {

using NodePtr = std::shared_ptr<const ChatTemplate::Node>;
using Node = ChatTemplate::Node;

struct Segment {
  enum Kind { kText, kExpr, kStmt } kind;
  std::string body;
};

// Splits the source into text, {{ }} and {% %} segments, applying `-` whitespace control,
// trim_blocks and lstrip_blocks; comments are dropped.
absl::StatusOr<std::vector<Segment>> Segments(const std::string& src) {
  std::vector<Segment> out;
  std::string text;
  bool strip_next = false, trim_newline = false;
  size_t i = 0;
  auto flush = [&]() { if (!text.empty()) out.push_back({Segment::kText, text}); text.clear(); };
  while (i < src.size()) {
    const size_t open = src.find('{', i);
    const bool tag = open != std::string::npos && open + 1 < src.size() &&
                     (src[open + 1] == '{' || src[open + 1] == '%' || src[open + 1] == '#');
    std::string piece = src.substr(i, (tag ? open : src.size()) - i);
    if (!tag && open != std::string::npos) {  // a lone '{': keep scanning after it
      piece = src.substr(i, open + 1 - i);
    }
    if (strip_next) { piece.erase(0, piece.find_first_not_of(" \t\r\n") == std::string::npos ? piece.size() : piece.find_first_not_of(" \t\r\n")); }
    if (trim_newline && !piece.empty()) {
      if (piece[0] == '\n') piece.erase(0, 1);
      else if (piece.compare(0, 2, "\r\n") == 0) piece.erase(0, 2);
    }
    if (!piece.empty() || !tag) { strip_next = false; trim_newline = false; }
    text += piece;
    if (!tag) { i = open == std::string::npos ? src.size() : open + 1; continue; }
    const char type = src[open + 1];
    size_t p = open + 2;
    const bool minus_left = p < src.size() && src[p] == '-';
    const bool plus_left = p < src.size() && src[p] == '+';
    if (minus_left || plus_left) ++p;
    if (minus_left) {
      text.erase(text.find_last_not_of(" \t\r\n") == std::string::npos ? 0 : text.find_last_not_of(" \t\r\n") + 1);
    } else if (type != '{' && !plus_left) {  // lstrip_blocks
      const size_t nl = text.find_last_of('\n');
      const size_t from = nl == std::string::npos ? 0 : nl + 1;
      if (text.find_first_not_of(" \t", from) == std::string::npos && (nl != std::string::npos || out.empty())) {
        text.erase(from);
      }
    }
    const std::string close = type == '{' ? "}}" : type == '%' ? "%}" : "#}";
    size_t end = p;
    char quote = 0;
    for (; end + 1 < src.size(); ++end) {
      if (type != '#') {
        if (quote) { if (src[end] == '\\') { ++end; continue; } if (src[end] == quote) quote = 0; continue; }
        if (src[end] == '\'' || src[end] == '"') { quote = src[end]; continue; }
      }
      if (src.compare(end, 2, close) == 0) break;
    }
    if (end + 1 >= src.size()) return Bad(absl::StrCat("unclosed '", std::string(1, '{') + type, "' at offset ", open));
    std::string body = src.substr(p, end - p);
    const bool minus_right = !body.empty() && body.back() == '-';
    if (minus_right || (!body.empty() && body.back() == '+')) body.pop_back();
    i = end + 2;
    strip_next = minus_right;
    trim_newline = !minus_right && type != '{';  // trim_blocks
    if (type == '#') continue;
    flush();
    out.push_back({type == '{' ? Segment::kExpr : Segment::kStmt, std::string(absl::StripAsciiWhitespace(body))});
  }
  flush();
  return out;
}

class TemplateParser {
 public:
  explicit TemplateParser(std::vector<Segment> s) : s_(std::move(s)) {}
  // Nodes up to one of `ends` (its keyword in *end; "" at the end of the source).
  absl::StatusOr<std::vector<NodePtr>> Block(const std::vector<std::string>& ends, std::string* end, std::string* rest) {
    std::vector<NodePtr> nodes;
    while (p_ < s_.size()) {
      const Segment& seg = s_[p_++];
      auto n = std::make_shared<Node>();
      if (seg.kind == Segment::kText) {
        n->kind = Node::kText;
        n->text = seg.body;
        nodes.push_back(n);
        continue;
      }
      if (seg.kind == Segment::kExpr) {
        n->kind = Node::kOutput;
        LORASERVE_ASSIGN_OR_RETURN(n->expr, ParseExpr(seg.body));
        nodes.push_back(n);
        continue;
      }
      const size_t sp = seg.body.find_first_of(" \t\n");
      const std::string kw = seg.body.substr(0, sp);
      const std::string args = sp == std::string::npos ? "" : seg.body.substr(sp + 1);
      if (std::find(ends.begin(), ends.end(), kw) != ends.end()) {
        *end = kw;
        *rest = args;
        return nodes;
      }
      if (kw == "if") {
        n->kind = Node::kIf;
        std::string cond = args, got, next;
        for (;;) {
          LORASERVE_ASSIGN_OR_RETURN(ExprPtr c, cond.empty() ? absl::StatusOr<ExprPtr>(nullptr) : ParseExpr(cond));
          LORASERVE_ASSIGN_OR_RETURN(auto body, Block({"elif", "else", "endif"}, &got, &next));
          n->branches.emplace_back(c, std::move(body));
          if (got == "endif") break;
          if (got.empty()) return Bad("{% if %} without {% endif %}");
          if (got == "else") { cond.clear(); if (n->branches.back().first == nullptr) return Bad("two {% else %}"); continue; }
          cond = next;
        }
        // An else branch is stored with a null condition; mark "no else" branches correctly.
        nodes.push_back(n);
      } else if (kw == "for") {
        n->kind = Node::kFor;
        const size_t in = args.find(" in ");
        if (in == std::string::npos) return Bad("{% for %} needs 'x in xs': " + args);
        for (absl::string_view t : absl::StrSplit(args.substr(0, in), ',')) {
          n->targets.emplace_back(absl::StripAsciiWhitespace(t));
        }
        std::string iter = args.substr(in + 4);
        LORASERVE_ASSIGN_OR_RETURN(std::vector<Token> tokens, Lex(iter));
        // `for x in xs if cond`: split at a top-level `if` not followed by `else` later.
        int depth = 0;
        size_t split = tokens.size();
        for (size_t k = 0; k < tokens.size(); ++k) {
          const Token& t = tokens[k];
          if (t.kind == Token::kOp && (t.text == "(" || t.text == "[" || t.text == "{")) ++depth;
          if (t.kind == Token::kOp && (t.text == ")" || t.text == "]" || t.text == "}")) --depth;
          if (depth == 0 && t.kind == Token::kName && t.text == "if") split = k;
        }
        std::vector<Token> head(tokens.begin(), tokens.begin() + std::min(split, tokens.size() - 1));
        head.push_back({Token::kEnd, "", {}});
        ExprParser hp(head);
        LORASERVE_ASSIGN_OR_RETURN(n->expr, hp.Parse());
        if (split < tokens.size()) {
          ExprParser fp(std::vector<Token>(tokens.begin() + split + 1, tokens.end()));
          LORASERVE_ASSIGN_OR_RETURN(n->filter, fp.Parse());
        }
        std::string got, next;
        LORASERVE_ASSIGN_OR_RETURN(n->body, Block({"endfor"}, &got, &next));
        if (got.empty()) return Bad("{% for %} without {% endfor %}");
        nodes.push_back(n);
      } else if (kw == "set") {
        n->kind = Node::kSet;
        const size_t eq = args.find('=');
        if (eq == std::string::npos) return Bad("{% set %} needs 'name = value' (block sets are not supported)");
        for (absl::string_view t : absl::StrSplit(absl::StripAsciiWhitespace(args.substr(0, eq)), '.')) {
          n->targets.emplace_back(absl::StripAsciiWhitespace(t));
        }
        if (n->targets.size() > 2) return Bad("{% set %} target too deep: " + args);
        LORASERVE_ASSIGN_OR_RETURN(n->expr, ParseExpr(args.substr(eq + 1)));
        nodes.push_back(n);
      } else {
        return Bad(absl::StrCat("unsupported statement {% ", kw, " %}"));
      }
    }
    end->clear();
    return nodes;
  }

 private:
  std::vector<Segment> s_;
  size_t p_ = 0;
};

// ---- evaluation ---------------------------------------------------------------------------

bool Truthy(const Json& v) {
  if (IsUndefined(v) || v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string()) return !v.get_ref<const std::string&>().empty();  // json::empty() is false for any string
  if (v.is_array() || v.is_object()) return !v.empty();
  return true;
}

std::string PyRepr(const Json& v);
std::string Str(const Json& v) {
  if (IsUndefined(v)) return "";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  if (v.is_null()) return "None";
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number()) {
    const double d = v.get<double>();
    if (std::floor(d) == d && std::abs(d) < 1e16) return absl::StrCat(static_cast<int64_t>(d), ".0");
    char buf[32];
    for (int precision = 1; precision <= 17; ++precision) {  // Python's repr: the shortest that round-trips
      std::snprintf(buf, sizeof(buf), "%.*g", precision, d);
      if (std::strtod(buf, nullptr) == d) break;
    }
    return buf;
  }
  return PyRepr(v);
}
std::string PyRepr(const Json& v) {
  if (v.is_string()) return "'" + absl::StrReplaceAll(v.get<std::string>(), {{"\\", "\\\\"}, {"'", "\\'"}, {"\n", "\\n"}}) + "'";
  if (v.is_array()) {
    std::vector<std::string> parts;
    for (const Json& x : v) parts.push_back(PyRepr(x));
    return "[" + absl::StrJoin(parts, ", ") + "]";
  }
  if (v.is_object()) {
    std::vector<std::string> parts;
    for (const auto& [k, x] : v.items()) parts.push_back(PyRepr(Json(k)) + ": " + PyRepr(x));
    return "{" + absl::StrJoin(parts, ", ") + "}";
  }
  return Str(v);
}
// Python's json.dumps(v, ensure_ascii=False, indent=indent) (separators ", " and ": ").
std::string ToJson(const Json& v, int indent, int level = 0) {
  if (IsUndefined(v)) return "null";
  const std::string nl = indent > 0 ? "\n" + std::string((level + 1) * indent, ' ') : "";
  const std::string close_nl = indent > 0 ? "\n" + std::string(level * indent, ' ') : "";
  const std::string sep = indent > 0 ? "," : ", ";
  if (v.is_array()) {
    if (v.empty()) return "[]";
    std::vector<std::string> parts;
    for (const Json& x : v) parts.push_back(ToJson(x, indent, level + 1));
    return "[" + nl + absl::StrJoin(parts, sep + nl) + close_nl + "]";
  }
  if (v.is_object()) {
    if (v.empty()) return "{}";
    std::vector<std::string> parts;
    for (const auto& [k, x] : v.items()) parts.push_back(Json(k).dump(-1, ' ', false) + ": " + ToJson(x, indent, level + 1));
    return "{" + nl + absl::StrJoin(parts, sep + nl) + close_nl + "}";
  }
  return v.dump(-1, ' ', false);
}

class Renderer {
 public:
  explicit Renderer(const Json& context) { scopes_.emplace_back(); for (const auto& [k, v] : context.items()) scopes_[0][k] = v; }

  absl::Status Run(const std::vector<NodePtr>& nodes, std::string* out) {
    for (const NodePtr& n : nodes) {
      switch (n->kind) {
        case Node::kText: *out += n->text; break;
        case Node::kOutput: { LORASERVE_ASSIGN_OR_RETURN(Json v, Eval(*n->expr)); *out += Str(v); break; }
        case Node::kIf:
          for (const auto& [cond, body] : n->branches) {
            bool take = cond == nullptr;
            if (!take) { LORASERVE_ASSIGN_OR_RETURN(Json c, Eval(*cond)); take = Truthy(c); }
            if (take) { LORASERVE_RETURN_IF_ERROR(Run(body, out)); break; }
          }
          break;
        case Node::kSet: {
          LORASERVE_ASSIGN_OR_RETURN(Json v, Eval(*n->expr));
          if (n->targets.size() == 1) { scopes_.back()[n->targets[0]] = v; break; }
          Json* ns = Lookup(n->targets[0]);
          if (ns == nullptr || !ns->is_object()) return Bad(n->targets[0] + " is not a namespace");
          (*ns)[n->targets[1]] = v;
          break;
        }
        case Node::kFor: LORASERVE_RETURN_IF_ERROR(For(*n, out)); break;
      }
    }
    return absl::OkStatus();
  }

 private:
  absl::Status For(const Node& n, std::string* out) {
    LORASERVE_ASSIGN_OR_RETURN(Json seq, Eval(*n.expr));
    std::vector<Json> items;
    if (seq.is_array()) for (const Json& x : seq) items.push_back(x);
    else if (seq.is_object()) for (const auto& [k, x] : seq.items()) items.push_back(k);
    else if (seq.is_string()) for (char c : seq.get<std::string>()) items.push_back(std::string(1, c));
    else if (!IsUndefined(seq) && !seq.is_null()) return Bad("cannot iterate over " + Str(seq));
    scopes_.emplace_back();
    auto bind = [&](const Json& x) -> absl::Status {
      if (n.targets.size() == 1) { scopes_.back()[n.targets[0]] = x; return absl::OkStatus(); }
      if (!x.is_array() || x.size() != n.targets.size()) return Bad("cannot unpack " + Str(x));
      for (size_t k = 0; k < n.targets.size(); ++k) scopes_.back()[n.targets[k]] = x[k];
      return absl::OkStatus();
    };
    if (n.filter) {
      std::vector<Json> kept;
      for (const Json& x : items) {
        LORASERVE_RETURN_IF_ERROR(bind(x));
        LORASERVE_ASSIGN_OR_RETURN(Json keep, Eval(*n.filter));
        if (Truthy(keep)) kept.push_back(x);
      }
      items = std::move(kept);
    }
    const int64_t len = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < len; ++k) {
      LORASERVE_RETURN_IF_ERROR(bind(items[k]));
      scopes_.back()["loop"] = Json{{"index", k + 1}, {"index0", k}, {"first", k == 0}, {"last", k == len - 1},
                                    {"length", len}, {"revindex", len - k}, {"revindex0", len - k - 1},
                                    {"previtem", k > 0 ? items[k - 1] : Json()}, {"nextitem", k + 1 < len ? items[k + 1] : Json()}};
      absl::Status s = Run(n.body, out);
      if (!s.ok()) { scopes_.pop_back(); return s; }
    }
    scopes_.pop_back();
    return absl::OkStatus();
  }

  Json* Lookup(const std::string& name) {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return &f->second;
    }
    return nullptr;
  }

  static Json Index(const Json& v, const Json& key) {
    if (v.is_object() && key.is_string()) { auto it = v.find(key.get<std::string>()); return it == v.end() ? Undefined() : *it; }
    if ((v.is_array() || v.is_string()) && key.is_number_integer()) {
      const int64_t n = v.is_array() ? v.size() : v.get<std::string>().size();
      int64_t i = key.get<int64_t>();
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Undefined();
      return v.is_array() ? v[i] : Json(std::string(1, v.get<std::string>()[i]));
    }
    return Undefined();
  }

  absl::StatusOr<Json> Eval(const Expr& e) {
    switch (e.kind) {
      case Expr::kLit: return e.value;
      case Expr::kName: { Json* v = Lookup(e.name); return v ? *v : Undefined(); }
      case Expr::kAttr: { LORASERVE_ASSIGN_OR_RETURN(Json o, Eval(*e.args[0])); return Index(o, Json(e.name)); }
      case Expr::kItem: {
        LORASERVE_ASSIGN_OR_RETURN(Json o, Eval(*e.args[0]));
        LORASERVE_ASSIGN_OR_RETURN(Json k, Eval(*e.args[1]));
        return Index(o, k);
      }
      case Expr::kSlice: return Slice(e);
      case Expr::kCall: return Call(e);
      case Expr::kFilter: return Filter(e);
      case Expr::kTest: return Test(e);
      case Expr::kNeg: {
        LORASERVE_ASSIGN_OR_RETURN(Json v, Eval(*e.args[0]));
        if (v.is_number_integer()) return Json(-v.get<int64_t>());
        if (v.is_number()) return Json(-v.get<double>());
        return Bad("cannot negate " + Str(v));
      }
      case Expr::kNot: { LORASERVE_ASSIGN_OR_RETURN(Json v, Eval(*e.args[0])); return Json(!Truthy(v)); }
      case Expr::kAnd: { LORASERVE_ASSIGN_OR_RETURN(Json a, Eval(*e.args[0])); if (!Truthy(a)) return a; return Eval(*e.args[1]); }
      case Expr::kOr: { LORASERVE_ASSIGN_OR_RETURN(Json a, Eval(*e.args[0])); if (Truthy(a)) return a; return Eval(*e.args[1]); }
      case Expr::kCond: {
        LORASERVE_ASSIGN_OR_RETURN(Json c, Eval(*e.args[0]));
        return Eval(*e.args[Truthy(c) ? 1 : 2]);
      }
      case Expr::kList: {
        Json out = Json::array();
        for (const ExprPtr& a : e.args) { LORASERVE_ASSIGN_OR_RETURN(Json v, Eval(*a)); out.push_back(v); }
        return out;
      }
      case Expr::kDict: {
        Json out = Json::object();
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          LORASERVE_ASSIGN_OR_RETURN(Json key, Eval(*e.args[k]));
          LORASERVE_ASSIGN_OR_RETURN(Json v, Eval(*e.args[k + 1]));
          out[Str(key)] = v;
        }
        return out;
      }
      case Expr::kBinary: return Binary(e);
    }
    return Bad("bad expression");
  }

  absl::StatusOr<Json> Binary(const Expr& e) {
    LORASERVE_ASSIGN_OR_RETURN(Json a, Eval(*e.args[0]));
    LORASERVE_ASSIGN_OR_RETURN(Json b, Eval(*e.args[1]));
    const std::string& op = e.name;
    if (op == "~") return Json(Str(a) + Str(b));
    if (op == "==") return Json(!IsUndefined(a) && !IsUndefined(b) && a == b);
    if (op == "!=") return Json(IsUndefined(a) || IsUndefined(b) || a != b);
    if (op == "in" || op == "not in") {
      bool found = false;
      if (b.is_string() && a.is_string()) found = b.get<std::string>().find(a.get<std::string>()) != std::string::npos;
      else if (b.is_array()) found = std::find(b.begin(), b.end(), a) != b.end();
      else if (b.is_object() && a.is_string()) found = b.contains(a.get<std::string>());
      return Json(op == "in" ? found : !found);
    }
    if (op == "+" && a.is_string() && b.is_string()) return Json(a.get<std::string>() + b.get<std::string>());
    if (op == "+" && a.is_array() && b.is_array()) { Json out = a; for (const Json& x : b) out.push_back(x); return out; }
    if (op == "*" && a.is_string() && b.is_number_integer()) {
      std::string out;
      for (int64_t k = 0; k < b.get<int64_t>(); ++k) out += a.get<std::string>();
      return Json(out);
    }
    if (a.is_string() && b.is_string() && (op == "<" || op == ">" || op == "<=" || op == ">=")) {
      const int c = a.get<std::string>().compare(b.get<std::string>());
      return Json(op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0);
    }
    if (!a.is_number() || !b.is_number()) return Bad(absl::StrCat("operator ", op, " on ", PyRepr(a), " and ", PyRepr(b)));
    const bool ints = a.is_number_integer() && b.is_number_integer();
    const double x = a.get<double>(), y = b.get<double>();
    if (op == "<") return Json(x < y);
    if (op == ">") return Json(x > y);
    if (op == "<=") return Json(x <= y);
    if (op == ">=") return Json(x >= y);
    if (op == "/") { if (y == 0) return Bad("division by zero"); return Json(x / y); }
    if (ints) {
      const int64_t i = a.get<int64_t>(), j = b.get<int64_t>();
      if ((op == "//" || op == "%") && j == 0) return Bad("division by zero");
      if (op == "+") return Json(i + j);
      if (op == "-") return Json(i - j);
      if (op == "*") return Json(i * j);
      const int64_t q = static_cast<int64_t>(std::floor(static_cast<double>(i) / j));
      if (op == "//") return Json(q);
      if (op == "%") return Json(i - q * j);
    }
    if (op == "+") return Json(x + y);
    if (op == "-") return Json(x - y);
    if (op == "*") return Json(x * y);
    if (op == "//") return Json(std::floor(x / y));
    if (op == "%") return Json(std::fmod(x, y));
    return Bad("unsupported operator " + op);
  }

  absl::StatusOr<Json> Slice(const Expr& e) {
    LORASERVE_ASSIGN_OR_RETURN(Json v, Eval(*e.args[0]));
    int64_t bounds[3];
    const bool is_str = v.is_string();
    if (!is_str && !v.is_array()) return Bad("cannot slice " + PyRepr(v));
    const int64_t n = is_str ? v.get<std::string>().size() : v.size();
    LORASERVE_ASSIGN_OR_RETURN(Json step_v, Eval(*e.args[3]));
    const int64_t step = step_v.is_number_integer() ? step_v.get<int64_t>() : 1;
    if (step == 0) return Bad("slice step 0");
    for (int k = 0; k < 2; ++k) {
      LORASERVE_ASSIGN_OR_RETURN(Json b, Eval(*e.args[1 + k]));
      if (!b.is_number_integer()) { bounds[k] = step > 0 ? (k == 0 ? 0 : n) : (k == 0 ? n - 1 : -1); continue; }
      int64_t i = b.get<int64_t>();
      if (i < 0) i += n;
      bounds[k] = step > 0 ? std::clamp<int64_t>(i, 0, n) : std::clamp<int64_t>(i, -1, n - 1);
    }
    Json out = is_str ? Json("") : Json::array();
    for (int64_t i = bounds[0]; step > 0 ? i < bounds[1] : i > bounds[1]; i += step) {
      if (is_str) out = out.get<std::string>() + v.get<std::string>()[i];
      else out.push_back(v[i]);
    }
    return out;
  }

  absl::StatusOr<std::vector<Json>> ArgValues(const Expr& e, size_t from) {
    std::vector<Json> out;
    for (size_t k = from; k < e.args.size(); ++k) { LORASERVE_ASSIGN_OR_RETURN(Json v, Eval(*e.args[k])); out.push_back(v); }
    return out;
  }

  absl::StatusOr<Json> Call(const Expr& e) {
    const Expr& callee = *e.args[0];
    LORASERVE_ASSIGN_OR_RETURN(std::vector<Json> args, ArgValues(e, 1));
    if (callee.kind == Expr::kName && Lookup(callee.name) == nullptr) {
      if (callee.name == "raise_exception") return absl::InvalidArgumentError(args.empty() ? "raise_exception" : Str(args[0]));
      if (callee.name == "namespace") {
        Json ns = Json::object();
        for (const auto& [k, v] : e.kwargs) { LORASERVE_ASSIGN_OR_RETURN(ns[k], Eval(*v)); }
        return ns;
      }
      if (callee.name == "range" && !args.empty() && args.back().is_number_integer()) {
        const int64_t lo = args.size() > 1 ? args[0].get<int64_t>() : 0, hi = args.back().get<int64_t>();
        Json out = Json::array();
        for (int64_t i = lo; i < hi; ++i) out.push_back(i);
        return out;
      }
      return Bad("unknown function " + callee.name);
    }
    if (callee.kind != Expr::kAttr) return Bad("only functions and methods can be called");
    LORASERVE_ASSIGN_OR_RETURN(Json self, Eval(*callee.args[0]));
    const std::string& m = callee.name;
    if (self.is_string()) {
      const std::string s = self.get<std::string>();
      const std::string arg = !args.empty() && args[0].is_string() ? args[0].get<std::string>() : "";
      if (m == "strip" || m == "lstrip" || m == "rstrip") {
        const std::string chars = args.empty() ? " \t\r\n\f\v" : arg;
        size_t b = m == "rstrip" ? 0 : s.find_first_not_of(chars);
        if (b == std::string::npos) return Json("");
        size_t end = m == "lstrip" ? s.size() : s.find_last_not_of(chars) + 1;
        return Json(s.substr(b, end - b));
      }
      if (m == "startswith") return Json(s.compare(0, arg.size(), arg) == 0);
      if (m == "endswith") return Json(s.size() >= arg.size() && s.compare(s.size() - arg.size(), arg.size(), arg) == 0);
      if (m == "upper") return Json(absl::AsciiStrToUpper(s));
      if (m == "lower") return Json(absl::AsciiStrToLower(s));
      if (m == "title") return Filter1("title", self, {});
      if (m == "replace" && args.size() == 2) return Json(absl::StrReplaceAll(s, {{arg, Str(args[1])}}));
      if (m == "split") {
        Json out = Json::array();
        if (args.empty()) for (absl::string_view p : absl::StrSplit(s, absl::ByAnyChar(" \t\n"), absl::SkipEmpty())) out.push_back(std::string(p));
        else for (absl::string_view p : absl::StrSplit(s, arg)) out.push_back(std::string(p));
        return out;
      }
    }
    if (self.is_object()) {
      if (m == "get") { Json v = args.empty() ? Undefined() : Index(self, args[0]); return IsUndefined(v) && args.size() > 1 ? args[1] : (IsUndefined(v) ? Json() : v); }
      if (m == "items" || m == "keys" || m == "values") {
        Json out = Json::array();
        for (const auto& [k, v] : self.items()) out.push_back(m == "items" ? Json::array({k, v}) : m == "keys" ? Json(k) : v);
        return out;
      }
    }
    return Bad(absl::StrCat("unsupported method .", m, "() on ", PyRepr(self)));
  }

  absl::StatusOr<Json> Filter(const Expr& e) {
    LORASERVE_ASSIGN_OR_RETURN(Json v, Eval(*e.args[0]));
    LORASERVE_ASSIGN_OR_RETURN(std::vector<Json> args, ArgValues(e, 1));
    std::map<std::string, Json> kwargs;
    for (const auto& [k, x] : e.kwargs) { LORASERVE_ASSIGN_OR_RETURN(kwargs[k], Eval(*x)); }
    return Filter1(e.name, v, args, kwargs);
  }

  static absl::StatusOr<Json> Filter1(const std::string& f, const Json& v, const std::vector<Json>& args,
                                      const std::map<std::string, Json>& kwargs = {}) {
    if (f == "trim") return Json(std::string(absl::StripAsciiWhitespace(Str(v))));
    if (f == "upper") return Json(absl::AsciiStrToUpper(Str(v)));
    if (f == "lower") return Json(absl::AsciiStrToLower(Str(v)));
    if (f == "capitalize") { std::string s = absl::AsciiStrToLower(Str(v)); if (!s.empty()) s[0] = absl::ascii_toupper(s[0]); return Json(s); }
    if (f == "title") {
      std::string s = Str(v);
      for (size_t i = 0; i < s.size(); ++i) s[i] = (i == 0 || !absl::ascii_isalpha(s[i - 1])) ? absl::ascii_toupper(s[i]) : absl::ascii_tolower(s[i]);
      return Json(s);
    }
    if (f == "length" || f == "count") return Json(static_cast<int64_t>(v.is_string() ? v.get<std::string>().size() : (v.is_array() || v.is_object()) ? v.size() : 0));
    if (f == "tojson") {
      auto it = kwargs.find("indent");
      const int indent = it != kwargs.end() && it->second.is_number_integer() ? it->second.get<int>() : (!args.empty() && args[0].is_number_integer() ? args[0].get<int>() : 0);
      return Json(ToJson(v, indent));
    }
    if (f == "string") return Json(Str(v));
    if (f == "int") { if (v.is_number()) return Json(static_cast<int64_t>(v.get<double>())); try { return Json(std::stoll(Str(v))); } catch (...) { return Json(0); } }
    if (f == "float") { if (v.is_number()) return Json(v.get<double>()); try { return Json(std::stod(Str(v))); } catch (...) { return Json(0.0); } }
    if (f == "first" || f == "last") {
      if (v.is_array()) return v.empty() ? Undefined() : (f == "first" ? v.front() : v.back());
      if (v.is_string() && !v.get<std::string>().empty()) { const std::string s = v.get<std::string>(); return Json(std::string(1, f == "first" ? s.front() : s.back())); }
      return Undefined();
    }
    if (f == "join") {
      std::vector<std::string> parts;
      if (v.is_array()) for (const Json& x : v) parts.push_back(Str(x));
      return Json(absl::StrJoin(parts, args.empty() ? "" : Str(args[0])));
    }
    if (f == "default" || f == "d") {
      const bool boolean = args.size() > 1 && Truthy(args[1]);
      if (IsUndefined(v) || (boolean && !Truthy(v))) return args.empty() ? Json("") : args[0];
      return v;
    }
    if (f == "replace" && args.size() >= 2) return Json(absl::StrReplaceAll(Str(v), {{Str(args[0]), Str(args[1])}}));
    if (f == "list") {
      if (v.is_array()) return v;
      Json out = Json::array();
      if (v.is_string()) for (char c : v.get<std::string>()) out.push_back(std::string(1, c));
      if (v.is_object()) for (const auto& [k, x] : v.items()) out.push_back(k);
      return out;
    }
    if (f == "items" && v.is_object()) {
      Json out = Json::array();
      for (const auto& [k, x] : v.items()) out.push_back(Json::array({k, x}));
      return out;
    }
    if (f == "reverse") {
      if (v.is_string()) { std::string s = v.get<std::string>(); std::reverse(s.begin(), s.end()); return Json(s); }
      if (v.is_array()) { Json out = Json::array(); for (auto it = v.rbegin(); it != v.rend(); ++it) out.push_back(*it); return out; }
    }
    if (f == "safe" || f == "e" || f == "escape") return f == "safe" ? v : Json(Str(v));
    return Bad("unsupported filter |" + f);
  }

  absl::StatusOr<Json> Test(const Expr& e) {
    LORASERVE_ASSIGN_OR_RETURN(Json v, Eval(*e.args[0]));
    const std::string& t = e.name;
    bool r;
    if (t == "defined") r = !IsUndefined(v);
    else if (t == "undefined") r = IsUndefined(v);
    else if (t == "none") r = v.is_null();
    else if (t == "string") r = v.is_string();
    else if (t == "number") r = v.is_number();
    else if (t == "integer") r = v.is_number_integer();
    else if (t == "boolean") r = v.is_boolean();
    else if (t == "mapping") r = v.is_object();
    else if (t == "sequence" || t == "iterable") r = v.is_array() || v.is_string() || (t == "iterable" && v.is_object());
    else if (t == "even" || t == "odd") r = v.is_number_integer() && (v.get<int64_t>() % 2 == 0) == (t == "even");
    else if (t == "true" || t == "false") r = v.is_boolean() && v.get<bool>() == (t == "true");
    else return Bad("unsupported test 'is " + t + "'");
    return Json(r != e.negate);
  }

  std::vector<std::map<std::string, Json>> scopes_;
};

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(const std::string& source) {
  LORASERVE_ASSIGN_OR_RETURN(std::vector<Segment> segments, Segments(source));
  TemplateParser parser(std::move(segments));
  std::string end, rest;
  LORASERVE_ASSIGN_OR_RETURN(std::vector<NodePtr> nodes, parser.Block({"endif", "endfor", "elif", "else"}, &end, &rest));
  if (!end.empty()) return Bad(absl::StrCat("{% ", end, " %} without its opening statement"));
  auto root = std::make_shared<Node>();
  root->kind = Node::kFor;  // a body holder; rendered through its body only
  root->body = std::move(nodes);
  ChatTemplate t;
  t.root_ = root;
  return t;
}

absl::StatusOr<std::string> ChatTemplate::Render(const Json& context) const {
  Renderer r(context.is_object() ? context : Json::object());
  std::string out;
  LORASERVE_RETURN_IF_ERROR(r.Run(root_->body, &out));
  return out;
}

absl::StatusOr<ModelChatTemplate> LoadModelChatTemplate(const std::string& model_dir) {
  std::string source;
  Json config = Json::object();
  const std::string config_path = JoinPath(model_dir, "tokenizer_config.json");
  if (FileExists(config_path)) {
    LORASERVE_ASSIGN_OR_RETURN(config, ReadJsonFile(config_path));
    if (!config.is_object()) return absl::InvalidArgumentError(config_path + " is not a JSON object");
  }
  const std::string jinja = JoinPath(model_dir, "chat_template.jinja");
  if (FileExists(jinja)) {
    LORASERVE_ASSIGN_OR_RETURN(source, ReadFile(jinja));
  } else if (auto it = config.find("chat_template"); it != config.end() && !it->is_null()) {
    if (it->is_string()) {
      source = it->get<std::string>();
    } else if (it->is_array()) {
      for (const Json& named : *it) {
        if (named.is_object() && named.value("name", "") == "default" && named.contains("template") && named["template"].is_string()) {
          source = named["template"].get<std::string>();
        }
      }
      if (source.empty()) return absl::InvalidArgumentError(config_path + ": chat_template has no \"default\" entry");
    } else {
      return absl::InvalidArgumentError(config_path + ": chat_template must be a string or a list");
    }
  }
  if (source.empty()) return absl::NotFoundError("the model has no chat template");
  ModelChatTemplate out;
  LORASERVE_ASSIGN_OR_RETURN(out.chat_template, ChatTemplate::Parse(source));
  auto token = [&config](const char* key) -> std::string {
    auto it = config.find(key);
    if (it == config.end()) return "";
    if (it->is_string()) return it->get<std::string>();
    if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) return (*it)["content"].get<std::string>();
    return "";
  };
  out.bos_token = token("bos_token");
  out.eos_token = token("eos_token");
  return out;
}

}  // namespace loraserve::core
