#include "core/tokenizer/chat_template.h"

#include <algorithm>
#include <cmath>
#include <limits>
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
#include "core/tokenizer/chat_template_syntax.h"

namespace loraserve::core {
namespace {

using chat_template_internal::Bad;
using chat_template_internal::Expr;
using chat_template_internal::ExprPtr;
using chat_template_internal::IsUndefined;
using chat_template_internal::NodePtr;
using chat_template_internal::Undefined;
using Node = ChatTemplate::Node;

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
      if (b.get<int64_t>() * static_cast<int64_t>(a.get_ref<const std::string&>().size()) > (int64_t{1} << 20)) {
        return Bad("string repetition over 1 MiB");
      }
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
      int64_t r = 0;
      if (op == "+") {
        if (__builtin_add_overflow(i, j, &r)) return Bad("integer overflow");
        return Json(r);
      }
      if (op == "-") {
        if (__builtin_sub_overflow(i, j, &r)) return Bad("integer overflow");
        return Json(r);
      }
      if (op == "*") {
        if (__builtin_mul_overflow(i, j, &r)) return Bad("integer overflow");
        return Json(r);
      }
      if (i == std::numeric_limits<int64_t>::min() && j == -1) return Bad("integer overflow");
      int64_t q = i / j;  // floor division, as Python's
      if (i % j != 0 && ((i < 0) != (j < 0))) --q;
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
        const int64_t lo = args.size() > 1 && args[0].is_number_integer() ? args[0].get<int64_t>() : 0;
        const int64_t hi = args.back().get<int64_t>();
        if (hi - lo > 100000) return Bad("range() over 100000 items");
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
    if (f == "int") { if (v.is_number_integer()) return v; if (v.is_number()) { const double d = std::trunc(v.get<double>()); return Json(d >= -9223372036854775808.0 && d < 9223372036854775808.0 ? static_cast<int64_t>(d) : 0); } try { return Json(std::stoll(Str(v))); } catch (...) { return Json(0); } }
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
  LORASERVE_ASSIGN_OR_RETURN(std::vector<NodePtr> nodes, chat_template_internal::ParseTemplate(source));
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
