#include "core/tokenizer/chat_template_syntax.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/base/status_macros.h"

namespace loraserve::core::chat_template_internal {

absl::Status Bad(const std::string& what) { return absl::InvalidArgumentError("chat template: " + what); }

namespace {



// ---- expressions --------------------------------------------------------------------------

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
    if (t.text == "[" || t.text == "{") {  // a list, or a dict as key, value, key, value, ...
      const bool dict = t.text == "{";
      const char* close = dict ? "}" : "]";
      auto e = std::make_shared<Expr>();
      e->kind = dict ? Expr::kDict : Expr::kList;
      while (!EatOp(close)) {
        if (!e->args.empty()) {
          LORASERVE_RETURN_IF_ERROR(Expect(","));
        }
        if (EatOp(close)) break;
        LORASERVE_ASSIGN_OR_RETURN(ExprPtr item, Cond());
        e->args.push_back(item);
        if (dict) {
          LORASERVE_RETURN_IF_ERROR(Expect(":"));
          LORASERVE_ASSIGN_OR_RETURN(ExprPtr value, Cond());
          e->args.push_back(value);
        }
        if (AtEnd()) return Bad(absl::StrCat("unclosed '", t.text, "'"));
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
        const std::string loop_vars = args.substr(0, in);  // named: the split views into it
        for (absl::string_view t : absl::StrSplit(loop_vars, ',')) {
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
        const std::string target = args.substr(0, eq);  // named: the split views into it
        for (absl::string_view t : absl::StrSplit(absl::StripAsciiWhitespace(target), '.')) {
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

}  // namespace

absl::StatusOr<std::vector<NodePtr>> ParseTemplate(const std::string& source) {
  LORASERVE_ASSIGN_OR_RETURN(std::vector<Segment> segments, Segments(source));
  TemplateParser parser(std::move(segments));
  std::string end, rest;
  LORASERVE_ASSIGN_OR_RETURN(std::vector<NodePtr> nodes, parser.Block({"endif", "endfor", "elif", "else"}, &end, &rest));
  if (!end.empty()) return Bad(absl::StrCat("{% ", end, " %} without its opening statement"));
  return nodes;
}

}  // namespace loraserve::core::chat_template_internal
