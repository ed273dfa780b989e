#include "chat/jinja.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <ctime>
#include <functional>
#include <map>
#include <optional>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace subbit::jinja {

namespace {

// ---------------------------------------------------------------------------------------------
// Values: JSON data as in Python, plus the three things JSON cannot hold: Undefined (a missing
// name or key; falsy, prints as nothing, errors on attribute access), namespace objects (mutable
// attribute bags shared by reference) and callables (globals, and methods bound to a receiver).

struct Value {
  enum class Kind { Undefined, Data, Namespace, Callable };
  Kind kind = Kind::Undefined;
  Json data;                         // Data
  std::shared_ptr<Json> attributes;  // Namespace
  std::string name;                 // Callable: function or method name; Undefined: what is missing
  std::shared_ptr<Value> receiver;  // Callable: the bound object of a method

  static Value undefined(std::string what) {
    Value v;
    v.name = std::move(what);
    return v;
  }
  static Value of(Json j) {
    Value v;
    v.kind = Kind::Data;
    v.data = std::move(j);
    return v;
  }
  static Value callable(std::string name, std::shared_ptr<Value> receiver = nullptr) {
    Value v;
    v.kind = Kind::Callable;
    v.name = std::move(name);
    v.receiver = std::move(receiver);
    return v;
  }
  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_data() const { return kind == Kind::Data; }
  bool is_string() const { return is_data() && data.is_string(); }
  bool is_number() const { return is_data() && data.is_number(); }
  bool is_none() const { return is_data() && data.is_null(); }
};

std::string python_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  std::string s = fmt::format("{}", d);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

std::string python_repr_string(const std::string& s) {
  const char quote =
      s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : s) {
    if (c == '\\')
      out += "\\\\";
    else if (c == quote)
      out += std::string("\\") + char(c);
    else if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else if (c < 0x20 || c == 0x7f)
      out += fmt::format("\\x{:02x}", c);
    else
      out += char(c);
  }
  return out + quote;
}

// Python repr() of a JSON value, as str() prints list and dict contents.
std::string python_repr(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null:
      return "None";
    case Json::value_t::boolean:
      return j.get<bool>() ? "True" : "False";
    case Json::value_t::number_integer:
      return std::to_string(j.get<int64_t>());
    case Json::value_t::number_unsigned:
      return std::to_string(j.get<uint64_t>());
    case Json::value_t::number_float:
      return python_float(j.get<double>());
    case Json::value_t::string:
      return python_repr_string(j.get<std::string>());
    case Json::value_t::array: {
      std::string out = "[";
      for (size_t i = 0; i < j.size(); ++i) out += (i ? ", " : "") + python_repr(j[i]);
      return out + "]";
    }
    case Json::value_t::object: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, v] : j.items()) {
        out += (first ? "" : ", ") + python_repr_string(k) + ": " + python_repr(v);
        first = false;
      }
      return out + "}";
    }
    default:
      return "<binary>";
  }
}

std::string python_str(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return "";
    case Value::Kind::Namespace:
      return "<Namespace " + python_repr(*v.attributes) + ">";
    case Value::Kind::Callable:
      return "<function " + v.name + ">";
    case Value::Kind::Data:
      return v.data.is_string() ? v.data.get<std::string>() : python_repr(v.data);
  }
  return "";
}

bool truthy(const Value& v) {
  if (v.kind == Value::Kind::Undefined) return false;
  if (v.kind != Value::Kind::Data) return true;
  const Json& j = v.data;
  switch (j.type()) {
    case Json::value_t::null:
      return false;
    case Json::value_t::boolean:
      return j.get<bool>();
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return j.get<int64_t>() != 0;
    case Json::value_t::number_float:
      return j.get<double>() != 0.0;
    case Json::value_t::string:
      return !j.get_ref<const std::string&>().empty();
    case Json::value_t::array:
    case Json::value_t::object:
      return !j.empty();
    default:
      return true;
  }
}

std::string type_name(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return "undefined";
    case Value::Kind::Namespace:
      return "namespace";
    case Value::Kind::Callable:
      return "function";
    case Value::Kind::Data:
      break;
  }
  switch (v.data.type()) {
    case Json::value_t::null:
      return "none";
    case Json::value_t::boolean:
      return "bool";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return "int";
    case Json::value_t::number_float:
      return "float";
    case Json::value_t::string:
      return "string";
    case Json::value_t::array:
      return "list";
    case Json::value_t::object:
      return "dict";
    default:
      return "binary";
  }
}

bool is_integer(const Json& j) { return j.is_number_integer() || j.is_boolean(); }
int64_t as_int(const Json& j) { return j.is_boolean() ? int64_t(j.get<bool>()) : j.get<int64_t>(); }
double as_double(const Json& j) { return j.is_boolean() ? double(j.get<bool>()) : j.get<double>(); }

bool values_equal(const Value& a, const Value& b) {
  if (a.is_data() && b.is_data()) {
    if ((a.data.is_number() || a.data.is_boolean()) && (b.data.is_number() || b.data.is_boolean()))
      return as_double(a.data) == as_double(b.data);
    return a.data == b.data;
  }
  if (a.is_undefined() && b.is_undefined()) return true;
  if (a.kind == Value::Kind::Namespace && b.kind == Value::Kind::Namespace)
    return a.attributes == b.attributes;
  return false;
}

// ---------------------------------------------------------------------------------------------
// Lexing: the whole template becomes one token stream; text outside tags is a Text token and
// tag delimiters are tokens of their own, so the parser sees statements and expressions alike.

enum class Tok { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, End };

struct Token {
  Tok kind;
  std::string text;  // Text, Name, String (decoded), Op; numbers as written
  size_t pos;        // byte offset in the (newline-normalised) source
};

class Source {
 public:
  Source(std::string text, std::string name) : text_(std::move(text)), name_(std::move(name)) {}
  const std::string& text() const { return text_; }
  std::string where(size_t pos) const {
    size_t line = 1, column = 1;
    for (size_t i = 0; i < pos && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    return fmt::format("{}:{}:{}", name_, line, column);
  }
  template <typename... Args>
  [[noreturn]] void error(size_t pos, fmt::format_string<Args...> format, Args&&... args) const {
    throw Error(where(pos) + ": " + fmt::format(format, std::forward<Args>(args)...));
  }

 private:
  std::string text_;
  std::string name_;
};

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

std::vector<Token> lex(const Source& src) {
  const std::string& s = src.text();
  const size_t n = s.size();
  std::vector<Token> out;
  size_t pos = 0;
  bool line_starting = true;  // the previous tag's consumed text ended a line (lstrip_blocks)
  auto at = [&](size_t i, std::string_view what) { return s.compare(i, what.size(), what) == 0; };

  while (pos < n) {
    size_t open = std::string::npos;
    for (const char* opener : {"{{", "{%", "{#"}) open = std::min(open, s.find(opener, pos));
    std::string text = s.substr(pos, open == std::string::npos ? std::string::npos : open - pos);
    if (open == std::string::npos) {
      if (!text.empty()) out.push_back({Tok::Text, text, pos});
      break;
    }
    const char kind = s[open + 1];
    const char marker = open + 2 < n ? s[open + 2] : '\0';
    if (marker == '-') {
      while (!text.empty() && is_space(text.back())) text.pop_back();
    } else if (kind != '{' && marker != '+') {
      const size_t line_start = text.rfind('\n') + 1;  // npos + 1 == 0
      if ((line_start > 0 || line_starting) && line_start < text.size() &&
          std::all_of(text.begin() + line_start, text.end(), is_space))
        text.resize(line_start);
    }
    if (!text.empty()) out.push_back({Tok::Text, text, pos});
    size_t p = open + 2 + (marker == '-' || marker == '+' ? 1 : 0);

    // Consumes a tag's closing delimiter at `end_at` ("-" before it strips the following
    // whitespace, "+" keeps it, and a block or comment otherwise swallows one newline:
    // trim_blocks) and notes whether the consumed text ended a line.
    auto close_tag = [&](size_t end_at, char sign, bool block_like) {
      size_t after = end_at + 2;
      if (sign == '-') {
        while (after < n && is_space(s[after])) ++after;
      } else if (block_like && sign != '+' && after < n && s[after] == '\n') {
        ++after;
      }
      line_starting = s[after - 1] == '\n';
      pos = after;
    };

    if (kind == '#') {
      const size_t close = s.find("#}", p);
      if (close == std::string::npos) src.error(open, "comment is never closed with #}}");
      const char sign =
          close > p && (s[close - 1] == '-' || s[close - 1] == '+') ? s[close - 1] : '\0';
      close_tag(close, sign, true);
      continue;
    }
    const bool block = kind == '%';
    out.push_back({block ? Tok::BlockBegin : Tok::VarBegin, "", open});
    const char* closer = block ? "%}" : "}}";
    int depth = 0;  // brackets open inside the tag: a "}}" there closes a dict, not the tag
    bool closed = false;
    while (p < n) {
      if (is_space(s[p])) {
        ++p;
        continue;
      }
      if (depth == 0) {
        const bool sign = (s[p] == '-' || s[p] == '+') && at(p + 1, closer);
        if (sign || at(p, closer)) {
          out.push_back({block ? Tok::BlockEnd : Tok::VarEnd, "", p});
          if (sign && s[p] == '+' && !block) src.error(p, "'+' is only allowed before %}}");
          close_tag(sign ? p + 1 : p, sign ? s[p] : '\0', block);
          closed = true;
          break;
        }
      }
      const size_t start = p;
      const char c = s[p];
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        while (p < n && (std::isalnum(static_cast<unsigned char>(s[p])) || s[p] == '_')) ++p;
        out.push_back({Tok::Name, s.substr(start, p - start), start});
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        bool is_float = false;
        while (p < n && (std::isdigit(static_cast<unsigned char>(s[p])) || s[p] == '_')) ++p;
        if (p + 1 < n && s[p] == '.' && std::isdigit(static_cast<unsigned char>(s[p + 1]))) {
          is_float = true;
          ++p;
          while (p < n && std::isdigit(static_cast<unsigned char>(s[p]))) ++p;
        }
        if (p < n && (s[p] == 'e' || s[p] == 'E')) {
          size_t q = p + 1;
          if (q < n && (s[q] == '+' || s[q] == '-')) ++q;
          if (q < n && std::isdigit(static_cast<unsigned char>(s[q]))) {
            is_float = true;
            p = q;
            while (p < n && std::isdigit(static_cast<unsigned char>(s[p]))) ++p;
          }
        }
        std::string digits = s.substr(start, p - start);
        digits.erase(std::remove(digits.begin(), digits.end(), '_'), digits.end());
        out.push_back({is_float ? Tok::Float : Tok::Int, digits, start});
      } else if (c == '\'' || c == '"') {
        std::string value;
        ++p;
        while (true) {
          if (p >= n) src.error(start, "string literal is never closed");
          if (s[p] == c) break;
          if (s[p] == '\\' && p + 1 < n) {
            const char e = s[p + 1];
            p += 2;
            switch (e) {
              case 'n':
                value += '\n';
                break;
              case 't':
                value += '\t';
                break;
              case 'r':
                value += '\r';
                break;
              case '\\':
                value += '\\';
                break;
              case '\'':
                value += '\'';
                break;
              case '"':
                value += '"';
                break;
              case '\n':
                break;  // line continuation
              default:
                value += '\\';
                value += e;
                break;  // Python keeps unknown escapes
            }
            continue;
          }
          value += s[p++];
        }
        ++p;
        out.push_back({Tok::String, value, start});
      } else {
        static const char* const kOps[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*",
                                           "/",  "%",  "<",  ">",  "(",  ")",  "[", "]", "{",
                                           "}",  ",",  ".",  ":",  "|",  "~",  "="};
        const char* found = nullptr;
        for (const char* op : kOps)
          if (at(p, op)) {
            found = op;
            break;
          }
        if (found == nullptr) src.error(p, "unexpected character '{}' in a tag", c);
        const std::string op = found;
        if (op == "(" || op == "[" || op == "{") ++depth;
        if ((op == ")" || op == "]" || op == "}") && depth > 0) --depth;
        out.push_back({Tok::Op, op, p});
        p += op.size();
      }
    }
    if (!closed) src.error(open, "tag is never closed with {}", closer);
  }
  out.push_back({Tok::End, "", n});
  return out;
}

// ---------------------------------------------------------------------------------------------
// Syntax tree.

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal,
    Name,
    List,
    Dict,
    Attr,
    Index,
    Slice,
    Call,
    Filter,
    Test,
    Unary,
    Binary,
    Ternary
  };
  Kind kind;
  size_t pos;
  std::string text;  // name, attribute, operator, filter or test name
  Json literal;
  std::vector<ExprPtr> args;  // operands (nullptr for absent slice bounds or ternary else)
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  bool negated = false;  // Test: "is not"
  int height = 1;        // of this expression tree (Parser::deepen)
};

struct Node;
using Body = std::vector<std::unique_ptr<Node>>;

struct Node {
  enum class Kind { Text, Output, If, For, Set, Break, Continue };
  Kind kind;
  size_t pos;
  std::string text;                                // Text
  ExprPtr expr;                                    // Output, Set value, For iterable
  std::vector<std::pair<ExprPtr, Body>> branches;  // If: condition and body, in order
  Body body, else_body;                            // For; If's else
  std::vector<std::string> targets;                // For loop variables; Set: name [, attribute]
  ExprPtr filter;                                  // For ... if filter
};

// Templates nested deeper than this (blocks, brackets, operators, expression trees) are refused:
// parsing, rendering and freeing recurse once per level, so unbounded nesting from a hostile
// template would overflow the stack. Real chat templates nest a few levels.
constexpr int kMaxNesting = 200;

class Parser {
 public:
  Parser(const Source& src, std::vector<Token> tokens) : src_(src), t_(std::move(tokens)) {}

  Body parse_template() {
    Body body = parse_body({});
    if (peek().kind != Tok::End) src_.error(peek().pos, "unexpected '{}'", peek_block_name());
    return body;
  }

 private:
  // Counts one level of parser recursion while it lives.
  class Nested {
   public:
    explicit Nested(Parser& p) : p_(p) {
      if (++p_.nesting_ > kMaxNesting)
        p_.src_.error(p_.peek().pos, "nested more than {} levels deep", kMaxNesting);
    }
    ~Nested() { --p_.nesting_; }

   private:
    Parser& p_;
  };
  // Sets e's height from its operands'; refuses trees taller than kMaxNesting, which chains of
  // operators, filters or attributes build without recursing while parsing.
  ExprPtr deepen(ExprPtr e) {
    auto height = [](const ExprPtr& child) { return child ? child->height : 0; };
    for (const ExprPtr& a : e->args) e->height = std::max(e->height, 1 + height(a));
    for (const auto& kv : e->kwargs) e->height = std::max(e->height, 1 + height(kv.second));
    if (e->height > kMaxNesting)
      src_.error(e->pos, "expression nested more than {} levels deep", kMaxNesting);
    return e;
  }

  const Token& peek(size_t ahead = 0) const { return t_[std::min(i_ + ahead, t_.size() - 1)]; }
  const Token& next() { return t_[std::min(i_++, t_.size() - 1)]; }
  bool is_op(const char* op, size_t ahead = 0) const {
    return peek(ahead).kind == Tok::Op && peek(ahead).text == op;
  }
  bool is_name(const char* name, size_t ahead = 0) const {
    return peek(ahead).kind == Tok::Name && peek(ahead).text == name;
  }
  void expect_op(const char* op) {
    if (!is_op(op)) src_.error(peek().pos, "expected '{}', found {}", op, describe(peek()));
    ++i_;
  }
  void expect_name(const char* name) {
    if (!is_name(name)) src_.error(peek().pos, "expected '{}', found {}", name, describe(peek()));
    ++i_;
  }
  void expect(Tok kind, const char* what) {
    if (peek().kind != kind)
      src_.error(peek().pos, "expected {}, found {}", what, describe(peek()));
    ++i_;
  }
  static std::string describe(const Token& t) {
    switch (t.kind) {
      case Tok::End:
        return "the end of the template";
      case Tok::BlockEnd:
        return "'%}'";
      case Tok::VarEnd:
        return "'}}'";
      case Tok::Text:
        return "text";
      case Tok::String:
        return "a string";
      default:
        return "'" + t.text + "'";
    }
  }
  // The statement keyword after a "{%" at the current token (for error messages).
  std::string peek_block_name() const {
    return peek().kind == Tok::BlockBegin && peek(1).kind == Tok::Name ? peek(1).text
                                                                       : describe(peek());
  }

  // Parses nodes until a block tag whose keyword is in `stops` (left unconsumed) or the end.
  Body parse_body(const std::vector<std::string>& stops) {
    const Nested nested(*this);
    Body body;
    while (true) {
      const Token& t = peek();
      if (t.kind == Tok::End) {
        if (!stops.empty()) src_.error(t.pos, "missing {{% {} %}}", stops.back());
        return body;
      }
      if (t.kind == Tok::Text) {
        auto node = std::make_unique<Node>();
        node->kind = Node::Kind::Text;
        node->pos = t.pos;
        node->text = t.text;
        body.push_back(std::move(node));
        ++i_;
      } else if (t.kind == Tok::VarBegin) {
        ++i_;
        auto node = std::make_unique<Node>();
        node->kind = Node::Kind::Output;
        node->pos = t.pos;
        node->expr = parse_expression();
        expect(Tok::VarEnd, "'}}'");
        body.push_back(std::move(node));
      } else if (t.kind == Tok::BlockBegin) {
        const Token& keyword = peek(1);
        if (keyword.kind != Tok::Name) src_.error(keyword.pos, "expected a statement keyword");
        if (std::find(stops.begin(), stops.end(), keyword.text) != stops.end()) return body;
        body.push_back(parse_statement());
      } else {
        src_.error(t.pos, "unexpected {}", describe(t));
      }
    }
  }

  std::unique_ptr<Node> parse_statement() {
    const size_t begin = next().pos;  // "{%"
    const Token keyword = next();
    auto node = std::make_unique<Node>();
    node->pos = begin;
    const std::string& k = keyword.text;
    if (k == "if") {
      node->kind = Node::Kind::If;
      ExprPtr condition = parse_expression();
      expect(Tok::BlockEnd, "'%}'");
      while (true) {
        Body body = parse_body({"elif", "else", "endif"});
        node->branches.emplace_back(std::move(condition), std::move(body));
        ++i_;  // "{%"
        const std::string which = next().text;
        if (which == "elif") {
          condition = parse_expression();
          expect(Tok::BlockEnd, "'%}'");
          continue;
        }
        expect(Tok::BlockEnd, "'%}'");
        if (which == "else") {
          node->else_body = parse_body({"endif"});
          i_ += 2;
          expect(Tok::BlockEnd, "'%}'");
        }
        break;
      }
    } else if (k == "for") {
      node->kind = Node::Kind::For;
      do {
        if (peek().kind != Tok::Name) src_.error(peek().pos, "expected a loop variable name");
        node->targets.push_back(next().text);
      } while (is_op(",") && (++i_, true));
      expect_name("in");
      node->expr = parse_expression(/*allow_ternary=*/false);
      if (is_name("if")) {
        ++i_;
        node->filter = parse_expression(false);
      }
      if (is_name("recursive")) src_.error(peek().pos, "recursive loops are not supported");
      expect(Tok::BlockEnd, "'%}'");
      node->body = parse_body({"else", "endfor"});
      ++i_;
      if (next().text == "else") {
        expect(Tok::BlockEnd, "'%}'");
        node->else_body = parse_body({"endfor"});
        i_ += 2;
      }
      expect(Tok::BlockEnd, "'%}'");
    } else if (k == "set") {
      node->kind = Node::Kind::Set;
      if (peek().kind != Tok::Name) src_.error(peek().pos, "expected a variable name after set");
      node->targets.push_back(next().text);
      if (is_op(".")) {
        ++i_;
        if (peek().kind != Tok::Name) src_.error(peek().pos, "expected an attribute name");
        node->targets.push_back(next().text);
      }
      if (is_op(",")) src_.error(peek().pos, "multiple assignment in set is not supported");
      if (peek().kind == Tok::BlockEnd)
        src_.error(peek().pos,
                   "block assignment ({{% set x %}}...{{% endset %}}) is not supported");
      expect_op("=");
      node->expr = parse_expression();
      expect(Tok::BlockEnd, "'%}'");
    } else if (k == "break" || k == "continue") {
      node->kind = k == "break" ? Node::Kind::Break : Node::Kind::Continue;
      expect(Tok::BlockEnd, "'%}'");
    } else if (k == "generation") {
      // transformers' assistant-mask marker: renders its body unchanged.
      expect(Tok::BlockEnd, "'%}'");
      node->kind = Node::Kind::If;
      auto always =
          std::make_unique<Expr>(Expr{Expr::Kind::Literal, begin, "", Json(true), {}, {}, false});
      node->branches.emplace_back(std::move(always), parse_body({"endgeneration"}));
      i_ += 2;
      expect(Tok::BlockEnd, "'%}'");
    } else {
      src_.error(keyword.pos,
                 "unsupported statement '{}' (this renderer implements if, for, set, "
                 "break, continue)",
                 k);
    }
    return node;
  }

  ExprPtr make(Expr::Kind kind, size_t pos, std::string text = {}) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->pos = pos;
    e->text = std::move(text);
    return e;
  }

  ExprPtr parse_expression(bool allow_ternary = true) {
    const Nested nested(*this);
    ExprPtr value = parse_or();
    if (allow_ternary && is_name("if")) {
      const size_t pos = next().pos;
      auto e = make(Expr::Kind::Ternary, pos);
      ExprPtr condition = parse_or();
      ExprPtr otherwise;
      if (is_name("else")) {
        ++i_;
        otherwise = parse_expression();
      }
      e->args.push_back(std::move(value));
      e->args.push_back(std::move(condition));
      e->args.push_back(std::move(otherwise));
      return deepen(std::move(e));
    }
    return value;
  }

  ExprPtr binary(const char* op, size_t pos, ExprPtr a, ExprPtr b) {
    auto e = make(Expr::Kind::Binary, pos, op);
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return deepen(std::move(e));
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      const size_t pos = next().pos;
      left = binary("or", pos, std::move(left), parse_and());
    }
    return left;
  }
  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      const size_t pos = next().pos;
      left = binary("and", pos, std::move(left), parse_not());
    }
    return left;
  }
  ExprPtr parse_not() {
    if (is_name("not")) {
      const Nested nested(*this);
      const size_t pos = next().pos;
      auto e = make(Expr::Kind::Unary, pos, "not");
      e->args.push_back(parse_not());
      return deepen(std::move(e));
    }
    return parse_compare();
  }
  ExprPtr parse_compare() {
    ExprPtr left = parse_add();
    while (true) {
      const size_t pos = peek().pos;
      if (peek().kind == Tok::Op &&
          (is_op("==") || is_op("!=") || is_op("<") || is_op("<=") || is_op(">") || is_op(">="))) {
        const std::string op = next().text;
        left = binary(op.c_str(), pos, std::move(left), parse_add());
      } else if (is_name("in")) {
        ++i_;
        left = binary("in", pos, std::move(left), parse_add());
      } else if (is_name("not") && is_name("in", 1)) {
        i_ += 2;
        left = binary("not in", pos, std::move(left), parse_add());
      } else {
        return left;
      }
    }
  }
  // Jinja2's precedence, loosest first: + -, then ~, then * / // %, then **, then unary
  // signs, whose operand's filters and tests apply after the sign ("-3 | abs" is 3).
  ExprPtr parse_add() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = next();
      const std::string op = t.text;
      left = binary(op.c_str(), t.pos, std::move(left), parse_concat());
    }
    return left;
  }
  ExprPtr parse_concat() {
    ExprPtr left = parse_mul();
    while (is_op("~")) {
      const size_t pos = next().pos;
      left = binary("~", pos, std::move(left), parse_mul());
    }
    return left;
  }
  ExprPtr parse_mul() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = next();
      const std::string op = t.text;
      left = binary(op.c_str(), t.pos, std::move(left), parse_pow());
    }
    return left;
  }
  ExprPtr parse_pow() {
    ExprPtr left = parse_unary();
    while (is_op("**")) {
      const size_t pos = next().pos;
      left = binary("**", pos, std::move(left), parse_unary());
    }
    return left;
  }
  ExprPtr parse_unary(bool with_filters = true) {
    ExprPtr value;
    if (is_op("-") || is_op("+")) {
      const Nested nested(*this);
      const Token& t = next();
      value = make(Expr::Kind::Unary, t.pos, t.text);
      value->args.push_back(parse_unary(false));
      value = deepen(std::move(value));
    } else {
      value = parse_postfix(parse_primary());
    }
    return with_filters ? parse_filters(std::move(value)) : std::move(value);
  }
  // Filters and tests bind tighter than binary operators: "a + b | trim" trims b.
  ExprPtr parse_filters(ExprPtr value) {
    while (true) {
      if (is_op("|")) {
        ++i_;
        if (peek().kind != Tok::Name) src_.error(peek().pos, "expected a filter name after '|'");
        const Token& name = next();
        auto e = make(Expr::Kind::Filter, name.pos, name.text);
        e->args.push_back(std::move(value));
        if (is_op("(")) parse_call_arguments(*e);
        value = parse_postfix(deepen(std::move(e)));
      } else if (is_name("is")) {
        ++i_;
        bool negated = false;
        if (is_name("not")) {
          ++i_;
          negated = true;
        }
        if (peek().kind != Tok::Name && !(peek().kind == Tok::Op && (is_op("==") || is_op("!="))))
          src_.error(peek().pos, "expected a test name after 'is'");
        const Token& name = next();
        auto e = make(Expr::Kind::Test, name.pos, name.text);
        e->negated = negated;
        e->args.push_back(std::move(value));
        if (is_op("(")) {
          parse_call_arguments(*e);
        } else if (peek().kind == Tok::String || peek().kind == Tok::Int ||
                   peek().kind == Tok::Float ||
                   (peek().kind == Tok::Name && !is_name("and") && !is_name("or") &&
                    !is_name("else") && !is_name("if") && !is_name("is") && !is_name("in") &&
                    !is_name("not"))) {
          e->args.push_back(parse_postfix(parse_primary()));  // "x is divisibleby 3"
        }
        value = deepen(std::move(e));
      } else {
        return value;
      }
    }
  }
  void parse_call_arguments(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (peek().kind == Tok::Name && is_op("=", 1)) {
        std::string key = next().text;
        ++i_;
        e.kwargs.emplace_back(std::move(key), parse_expression());
      } else {
        if (!e.kwargs.empty()) src_.error(peek().pos, "positional argument after keyword argument");
        e.args.push_back(parse_expression());
      }
      if (!is_op(",")) break;
      ++i_;
    }
    expect_op(")");
  }
  ExprPtr parse_postfix(ExprPtr value) {
    while (true) {
      if (is_op(".")) {
        ++i_;
        const Token& name = next();
        if (name.kind != Tok::Name && name.kind != Tok::Int)
          src_.error(name.pos, "expected an attribute name after '.'");
        auto e =
            make(name.kind == Tok::Int ? Expr::Kind::Index : Expr::Kind::Attr, name.pos, name.text);
        e->args.push_back(std::move(value));
        if (name.kind == Tok::Int)
          e->args.push_back(literal(name.pos, Json(integer_literal(name))));
        value = deepen(std::move(e));
      } else if (is_op("[")) {
        const size_t pos = next().pos;
        ExprPtr start, stop, step;
        bool slice = false;
        if (!is_op(":")) start = parse_expression();
        if (is_op(":")) {
          slice = true;
          ++i_;
          if (!is_op("]") && !is_op(":")) stop = parse_expression();
          if (is_op(":")) {
            ++i_;
            if (!is_op("]")) step = parse_expression();
          }
        }
        expect_op("]");
        auto e = make(slice ? Expr::Kind::Slice : Expr::Kind::Index, pos);
        e->args.push_back(std::move(value));
        e->args.push_back(std::move(start));
        if (slice) {
          e->args.push_back(std::move(stop));
          e->args.push_back(std::move(step));
        }
        value = deepen(std::move(e));
      } else if (is_op("(")) {
        auto e = make(Expr::Kind::Call, value->pos);
        e->args.push_back(std::move(value));
        parse_call_arguments(*e);
        value = deepen(std::move(e));
      } else {
        return value;
      }
    }
  }
  ExprPtr literal(size_t pos, Json j) {
    auto e = make(Expr::Kind::Literal, pos);
    e->literal = std::move(j);
    return e;
  }
  // Python's integers have no bound; the renderer's are 64-bit, so larger literals are refused.
  int64_t integer_literal(const Token& t) {
    int64_t value = 0;
    const auto [end, error] = std::from_chars(t.text.data(), t.text.data() + t.text.size(), value);
    if (error != std::errc() || end != t.text.data() + t.text.size())
      src_.error(t.pos, "integer literal {} is outside the 64-bit range", t.text);
    return value;
  }
  ExprPtr parse_primary() {
    const Token& t = next();
    switch (t.kind) {
      case Tok::String: {
        std::string value = t.text;
        while (peek().kind == Tok::String) value += next().text;  // adjacent literals join
        return literal(t.pos, value);
      }
      case Tok::Int:
        return literal(t.pos, Json(integer_literal(t)));
      // As Python's float(): out of range is inf or 0, not an error.
      case Tok::Float:
        return literal(t.pos, Json(std::strtod(t.text.c_str(), nullptr)));
      case Tok::Name:
        if (t.text == "true" || t.text == "True") return literal(t.pos, true);
        if (t.text == "false" || t.text == "False") return literal(t.pos, false);
        if (t.text == "none" || t.text == "None") return literal(t.pos, nullptr);
        return make(Expr::Kind::Name, t.pos, t.text);
      case Tok::Op:
        if (t.text == "(") {
          ExprPtr inner = parse_expression();
          if (is_op(",")) src_.error(peek().pos, "tuples are not supported");
          expect_op(")");
          return inner;
        }
        if (t.text == "[") {
          auto e = make(Expr::Kind::List, t.pos);
          while (!is_op("]")) {
            e->args.push_back(parse_expression());
            if (!is_op(",")) break;
            ++i_;
          }
          expect_op("]");
          return deepen(std::move(e));
        }
        if (t.text == "{") {
          auto e = make(Expr::Kind::Dict, t.pos);
          while (!is_op("}")) {
            e->args.push_back(parse_expression());
            expect_op(":");
            e->args.push_back(parse_expression());
            if (!is_op(",")) break;
            ++i_;
          }
          expect_op("}");
          return deepen(std::move(e));
        }
        break;
      default:
        break;
    }
    src_.error(t.pos, "expected an expression, found {}", describe(t));
  }

  const Source& src_;
  std::vector<Token> t_;
  size_t i_ = 0;
  int nesting_ = 0;  // parser recursion (Nested)
};

// ---------------------------------------------------------------------------------------------
// Evaluation.

enum class Flow { Normal, Break, Continue };

class Renderer {
 public:
  Renderer(const Source& src, const Json& globals) : src_(src) {
    scopes_.emplace_back();
    for (const auto& [k, v] : globals.items()) scopes_.back()[k] = Value::of(v);
    for (const char* f : {"raise_exception", "namespace", "range", "dict", "strftime_now"})
      if (!globals.contains(f)) scopes_.back()[f] = Value::callable(f);
  }

  Flow run(const Body& body, std::string& out) {
    for (const auto& node : body) {
      const Flow flow = run(*node, out);
      if (flow != Flow::Normal) return flow;
    }
    return Flow::Normal;
  }

 private:
  [[noreturn]] void error(size_t pos, const std::string& message) const {
    src_.error(pos, "{}", message);
  }

  // A chat template renders a few messages: budgets far above that bound what a hostile one
  // (tokenizer_config.json comes with downloaded models) can make the server do per request.
  static constexpr int64_t kMaxSteps = int64_t{1} << 20;  // statements and loop iterations
  static constexpr size_t kMaxOutput = size_t{1} << 26;   // bytes of rendered text

  Flow run(const Node& node, std::string& out) {
    if (++steps_ > kMaxSteps)
      error(node.pos, fmt::format("the template runs more than {} steps", kMaxSteps));
    if (out.size() > kMaxOutput)
      error(node.pos, fmt::format("the template renders more than {} bytes", kMaxOutput));
    switch (node.kind) {
      case Node::Kind::Text:
        out += node.text;
        return Flow::Normal;
      case Node::Kind::Output:
        out += python_str(eval(*node.expr));
        return Flow::Normal;
      case Node::Kind::If:
        for (const auto& [condition, body] : node.branches)
          if (truthy(eval(*condition))) return run(body, out);
        return run(node.else_body, out);
      case Node::Kind::Set: {
        Value value = eval(*node.expr);
        if (node.targets.size() == 1) {
          scopes_.back()[node.targets[0]] = std::move(value);
        } else {
          const Value target = lookup(node.targets[0]);
          if (target.kind != Value::Kind::Namespace)
            error(node.pos,
                  fmt::format("cannot assign attribute '{}' on a {} (only namespace objects)",
                              node.targets[1], type_name(target)));
          (*target.attributes)[node.targets[1]] = to_json(value, node.pos);
        }
        return Flow::Normal;
      }
      case Node::Kind::For:
        return run_for(node, out);
      case Node::Kind::Break:
        return Flow::Break;
      case Node::Kind::Continue:
        return Flow::Continue;
    }
    return Flow::Normal;
  }

  Flow run_for(const Node& node, std::string& out) {
    const Value iterable = eval(*node.expr);
    std::vector<Json> items = iterate(iterable, node.expr->pos);
    if (node.filter) {
      std::vector<Json> kept;
      for (Json& item : items) {
        scopes_.emplace_back();
        bind_targets(node, item);
        if (truthy(eval(*node.filter))) kept.push_back(std::move(item));
        scopes_.pop_back();
      }
      items = std::move(kept);
    }
    if (items.empty()) return run(node.else_body, out);
    const int64_t length = int64_t(items.size());
    for (int64_t i = 0; i < length; ++i) {
      if (++steps_ > kMaxSteps)
        error(node.pos, fmt::format("the template runs more than {} steps", kMaxSteps));
      scopes_.emplace_back();
      bind_targets(node, items[i]);
      Json loop = {{"index", i + 1},
                   {"index0", i},
                   {"revindex", length - i},
                   {"revindex0", length - i - 1},
                   {"first", i == 0},
                   {"last", i + 1 == length},
                   {"length", length},
                   {"previtem", i > 0 ? items[i - 1] : Json()},
                   {"nextitem", i + 1 < length ? items[i + 1] : Json()}};
      scopes_.back()["loop"] = Value::of(std::move(loop));
      const Flow flow = run(node.body, out);
      scopes_.pop_back();
      if (flow == Flow::Break) break;
    }
    return Flow::Normal;
  }

  void bind_targets(const Node& node, const Json& item) {
    if (node.targets.size() == 1) {
      scopes_.back()[node.targets[0]] = Value::of(item);
      return;
    }
    if (!item.is_array() || item.size() != node.targets.size())
      error(node.pos, fmt::format("cannot unpack {} into {} loop variables", python_repr(item),
                                  node.targets.size()));
    for (size_t k = 0; k < node.targets.size(); ++k)
      scopes_.back()[node.targets[k]] = Value::of(item[k]);
  }

  std::vector<Json> iterate(const Value& v, size_t pos) const {
    if (v.is_undefined()) return {};
    if (v.is_data()) {
      if (v.data.is_array()) return std::vector<Json>(v.data.begin(), v.data.end());
      if (v.data.is_object()) {
        std::vector<Json> keys;
        for (const auto& [k, unused] : v.data.items()) keys.emplace_back(k);
        return keys;
      }
      if (v.data.is_string()) {
        std::vector<Json> chars;
        const std::string s = v.data.get<std::string>();
        for (size_t i = 0; i < s.size();) {
          size_t len = 1;
          const unsigned char c = s[i];
          if (c >= 0xF0)
            len = 4;
          else if (c >= 0xE0)
            len = 3;
          else if (c >= 0xC0)
            len = 2;
          chars.emplace_back(s.substr(i, len));
          i += len;
        }
        return chars;
      }
    }
    error(pos, fmt::format("a {} is not iterable", type_name(v)));
  }

  Value lookup(const std::string& name) const {
    for (auto scope = scopes_.rbegin(); scope != scopes_.rend(); ++scope)
      if (auto it = scope->find(name); it != scope->end()) return it->second;
    return Value::undefined("'" + name + "'");
  }

  Json to_json(const Value& v, size_t pos) const {
    if (v.is_data()) return v.data;
    if (v.kind == Value::Kind::Namespace) return *v.attributes;
    if (v.is_undefined()) return nullptr;
    error(pos, "a function cannot be stored as data");
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::Literal:
        return Value::of(e.literal);
      case Expr::Kind::Name:
        return lookup(e.text);
      case Expr::Kind::List: {
        Json list = Json::array();
        for (const auto& item : e.args) list.push_back(to_json(eval(*item), item->pos));
        return Value::of(std::move(list));
      }
      case Expr::Kind::Dict: {
        Json dict = Json::object();
        for (size_t i = 0; i < e.args.size(); i += 2) {
          const Value key = eval(*e.args[i]);
          if (!key.is_string()) error(e.args[i]->pos, "dict keys must be strings here");
          dict[key.data.get<std::string>()] = to_json(eval(*e.args[i + 1]), e.args[i + 1]->pos);
        }
        return Value::of(std::move(dict));
      }
      case Expr::Kind::Attr:
        return attribute(eval(*e.args[0]), e.text, e.pos);
      case Expr::Kind::Index:
        return subscript(eval(*e.args[0]), eval(*e.args[1]), e.pos);
      case Expr::Kind::Slice:
        return slice(e);
      case Expr::Kind::Call:
        return call(e);
      case Expr::Kind::Filter:
        return filter(e);
      case Expr::Kind::Test: {
        const bool result = test(e);
        return Value::of(e.negated ? !result : result);
      }
      case Expr::Kind::Unary: {
        const Value v = eval(*e.args[0]);
        if (e.text == "not") return Value::of(!truthy(v));
        if (!v.is_data() || !(v.data.is_number() || v.data.is_boolean()))
          error(e.pos, fmt::format("bad operand type for unary {}: {}", e.text, type_name(v)));
        if (e.text == "+") return v;
        if (is_integer(v.data)) {
          if (as_int(v.data) == INT64_MIN) error(e.pos, "integer overflow in unary -");
          return Value::of(-as_int(v.data));
        }
        return Value::of(-as_double(v.data));
      }
      case Expr::Kind::Binary:
        return binary(e);
      case Expr::Kind::Ternary:
        if (truthy(eval(*e.args[1]))) return eval(*e.args[0]);
        return e.args[2] ? eval(*e.args[2]) : Value::undefined("the else branch");
    }
    error(e.pos, "unknown expression");
  }

  Value attribute(const Value& v, const std::string& name, size_t pos) {
    if (v.is_undefined())
      error(pos, fmt::format("{} is undefined (reading its attribute '{}')", v.name, name));
    if (v.kind == Value::Kind::Namespace) {
      if (v.attributes->contains(name)) return Value::of((*v.attributes)[name]);
      return Value::undefined("namespace attribute '" + name + "'");
    }
    if (v.is_data()) {
      static const char* const kStringMethods[] = {
          "strip", "lstrip", "rstrip",     "split",   "startswith", "endswith", "upper",
          "lower", "title",  "capitalize", "replace", "find",       "count"};
      static const char* const kDictMethods[] = {"items", "keys", "values", "get"};
      if (v.data.is_string())
        for (const char* m : kStringMethods)
          if (name == m) return Value::callable(name, std::make_shared<Value>(v));
      if (v.data.is_object()) {
        for (const char* m : kDictMethods)
          if (name == m) return Value::callable(name, std::make_shared<Value>(v));
        if (auto it = v.data.find(name); it != v.data.end()) return Value::of(*it);
      }
    }
    return Value::undefined("attribute '" + name + "' of a " + type_name(v));
  }

  Value subscript(const Value& v, const Value& key, size_t pos) {
    if (v.is_undefined()) error(pos, fmt::format("{} is undefined (indexing it)", v.name));
    if (v.kind == Value::Kind::Namespace && key.is_string())
      return attribute(v, key.data.get<std::string>(), pos);
    if (v.is_data()) {
      const Json& d = v.data;
      if (d.is_object() && key.is_string()) {
        if (auto it = d.find(key.data.get<std::string>()); it != d.end()) return Value::of(*it);
        return Value::undefined("key " + python_repr(key.data));
      }
      if ((d.is_array() || d.is_string()) && key.is_data() && is_integer(key.data)) {
        const int64_t size =
            d.is_array() ? int64_t(d.size()) : int64_t(d.get<std::string>().size());
        int64_t i = as_int(key.data);
        if (i < 0) i += size;
        if (i < 0 || i >= size) return Value::undefined("index " + python_repr(key.data));
        if (d.is_array()) return Value::of(d[size_t(i)]);
        return Value::of(d.get<std::string>().substr(size_t(i), 1));
      }
    }
    return Value::undefined("item " + python_str(key) + " of a " + type_name(v));
  }

  Value slice(const Expr& e) {
    const Value v = eval(*e.args[0]);
    auto bound = [&](const ExprPtr& x) -> std::optional<int64_t> {
      if (!x) return std::nullopt;
      const Value b = eval(*x);
      if (b.is_none()) return std::nullopt;
      if (!b.is_data() || !is_integer(b.data)) error(x->pos, "slice indices must be integers");
      return as_int(b.data);
    };
    const std::optional<int64_t> start = bound(e.args[1]), stop = bound(e.args[2]),
                                 step_opt = bound(e.args[3]);
    const int64_t step = step_opt.value_or(1);
    if (step == 0) error(e.pos, "slice step cannot be zero");
    if (!v.is_data() || !(v.data.is_array() || v.data.is_string()))
      error(e.pos, fmt::format("cannot slice a {}", type_name(v)));
    const int64_t size =
        v.data.is_array() ? int64_t(v.data.size()) : int64_t(v.data.get<std::string>().size());
    // Python's slice.indices().
    auto clamp = [&](std::optional<int64_t> x, int64_t default_value) {
      if (!x) return default_value;
      int64_t i = *x;
      if (i < 0) i += size;
      if (step > 0) return std::clamp<int64_t>(i, 0, size);
      return std::clamp<int64_t>(i, -1, size - 1);
    };
    const int64_t from = clamp(start, step > 0 ? 0 : size - 1);
    const int64_t to = clamp(stop, step > 0 ? size : -1);
    std::vector<int64_t> picks;
    for (int64_t i = from; step > 0 ? i < to : i > to; i += step) picks.push_back(i);
    if (v.data.is_array()) {
      Json out = Json::array();
      for (int64_t i : picks) out.push_back(v.data[size_t(i)]);
      return Value::of(std::move(out));
    }
    const std::string& s = v.data.get_ref<const std::string&>();
    std::string out;
    for (int64_t i : picks) out += s[size_t(i)];
    return Value::of(out);
  }

  struct Args {
    std::vector<Value> positional;
    std::map<std::string, Value> named;
  };
  Args evaluate_arguments(const Expr& e, size_t skip) {
    Args a;
    for (size_t i = skip; i < e.args.size(); ++i) a.positional.push_back(eval(*e.args[i]));
    for (const auto& [k, x] : e.kwargs) a.named[k] = eval(*x);
    return a;
  }
  // Argument `index` or keyword `key`, if given.
  static const Value* argument(const Args& a, size_t index, const char* key) {
    if (index < a.positional.size()) return &a.positional[index];
    if (auto it = a.named.find(key); it != a.named.end()) return &it->second;
    return nullptr;
  }
  std::string string_argument(const Args& a, size_t index, const char* key, size_t pos,
                              const std::string& fallback) {
    const Value* v = argument(a, index, key);
    if (v == nullptr || v->is_none()) return fallback;
    if (!v->is_string()) error(pos, fmt::format("argument '{}' must be a string", key));
    return v->data.get<std::string>();
  }

  Value call(const Expr& e) {
    const Value callee = eval(*e.args[0]);
    if (callee.kind != Value::Kind::Callable)
      error(e.pos, fmt::format("{} is not callable",
                               callee.is_undefined() ? callee.name : type_name(callee)));
    const Args a = evaluate_arguments(e, 1);
    if (callee.receiver) return method(*callee.receiver, callee.name, a, e.pos);
    const std::string& f = callee.name;
    if (f == "raise_exception") {
      const std::string message = a.positional.empty() ? "" : python_str(a.positional[0]);
      error(e.pos, "the template raised an error: " + message);
    }
    if (f == "namespace" || f == "dict") {
      Json attributes = Json::object();
      if (!a.positional.empty()) {
        if (!a.positional[0].is_data() || !a.positional[0].data.is_object())
          error(e.pos, f + "() takes a dict or keyword arguments");
        attributes = a.positional[0].data;
      }
      for (const auto& [k, v] : a.named) attributes[k] = to_json(v, e.pos);
      if (f == "dict") return Value::of(std::move(attributes));
      Value ns;
      ns.kind = Value::Kind::Namespace;
      ns.attributes = std::make_shared<Json>(std::move(attributes));
      return ns;
    }
    if (f == "range") {
      std::vector<int64_t> bounds;
      for (const Value& v : a.positional) {
        if (!v.is_data() || !is_integer(v.data)) error(e.pos, "range() takes integers");
        bounds.push_back(as_int(v.data));
      }
      if (bounds.empty() || bounds.size() > 3) error(e.pos, "range() takes 1 to 3 arguments");
      const int64_t start = bounds.size() > 1 ? bounds[0] : 0;
      const int64_t stop = bounds.size() > 1 ? bounds[1] : bounds[0];
      const int64_t step = bounds.size() > 2 ? bounds[2] : 1;
      if (step == 0) error(e.pos, "range() step cannot be zero");
      if ((stop - start) / step > 100000) error(e.pos, "range() is too long (over 100000 items)");
      Json out = Json::array();
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.push_back(i);
      return Value::of(std::move(out));
    }
    if (f == "strftime_now") {
      const std::string format = string_argument(a, 0, "format", e.pos, "%Y-%m-%d");
      const std::time_t now = std::time(nullptr);
      std::tm local{};
      localtime_r(&now, &local);
      char buffer[256];
      const size_t n = std::strftime(buffer, sizeof buffer, format.c_str(), &local);
      return Value::of(std::string(buffer, n));
    }
    error(e.pos, "unknown function " + f);
  }

  static std::string strip_chars(const std::string& s, const std::string& chars, bool left,
                                 bool right) {
    auto strip_this = [&](char c) {
      return chars.empty() ? is_space(c) : chars.find(c) != std::string::npos;
    };
    size_t b = 0, e = s.size();
    if (left)
      while (b < e && strip_this(s[b])) ++b;
    if (right)
      while (e > b && strip_this(s[e - 1])) --e;
    return s.substr(b, e - b);
  }
  static std::string replace_all(std::string s, const std::string& from, const std::string& to) {
    if (from.empty()) return s;
    size_t p = 0;
    while ((p = s.find(from, p)) != std::string::npos) {
      s.replace(p, from.size(), to);
      p += to.size();
    }
    return s;
  }
  static std::string title_case(const std::string& s) {
    std::string out = s;
    bool word_start = true;
    for (char& c : out) {
      const bool alpha = std::isalpha(static_cast<unsigned char>(c));
      if (alpha) c = word_start ? char(std::toupper(c)) : char(std::tolower(c));
      word_start = !alpha && !std::isdigit(static_cast<unsigned char>(c)) && c != '\'';
    }
    return out;
  }
  static std::string lower(std::string s) {
    for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
    return s;
  }
  static std::string upper(std::string s) {
    for (char& c : s) c = char(std::toupper(static_cast<unsigned char>(c)));
    return s;
  }
  static std::string capitalize(const std::string& s) {
    std::string out = lower(s);
    if (!out.empty()) out[0] = char(std::toupper(static_cast<unsigned char>(out[0])));
    return out;
  }

  Value method(const Value& self, const std::string& name, const Args& a, size_t pos) {
    const Json& d = self.data;
    if (d.is_object()) {
      if (name == "items") {
        Json out = Json::array();
        for (const auto& [k, v] : d.items()) out.push_back(Json::array({k, v}));
        return Value::of(std::move(out));
      }
      if (name == "keys" || name == "values") {
        Json out = Json::array();
        for (const auto& [k, v] : d.items()) out.push_back(name == "keys" ? Json(k) : v);
        return Value::of(std::move(out));
      }
      // get
      const Value* key = argument(a, 0, "key");
      if (key == nullptr || !key->is_string()) error(pos, "get() takes a string key");
      if (auto it = d.find(key->data.get<std::string>()); it != d.end()) return Value::of(*it);
      const Value* fallback = argument(a, 1, "default");
      return fallback ? *fallback : Value::of(nullptr);
    }
    const std::string s = d.get<std::string>();
    if (name == "strip" || name == "lstrip" || name == "rstrip")
      return Value::of(strip_chars(s, string_argument(a, 0, "chars", pos, ""), name != "rstrip",
                                   name != "lstrip"));
    if (name == "upper") return Value::of(upper(s));
    if (name == "lower") return Value::of(lower(s));
    if (name == "title") return Value::of(title_case(s));
    if (name == "capitalize") return Value::of(capitalize(s));
    if (name == "startswith" || name == "endswith") {
      const Value* x = argument(a, 0, "prefix");
      if (x == nullptr || !x->is_string()) error(pos, name + "() takes a string");
      const std::string& p = x->data.get_ref<const std::string&>();
      const bool match = p.size() <= s.size() &&
                         (name == "startswith" ? s.compare(0, p.size(), p) == 0
                                               : s.compare(s.size() - p.size(), p.size(), p) == 0);
      return Value::of(match);
    }
    if (name == "replace")
      return Value::of(replace_all(s, string_argument(a, 0, "old", pos, ""),
                                   string_argument(a, 1, "new", pos, "")));
    if (name == "find" || name == "count") {
      const std::string needle = string_argument(a, 0, "sub", pos, "");
      if (name == "find") {
        const size_t p = s.find(needle);
        return Value::of(p == std::string::npos ? int64_t(-1) : int64_t(p));
      }
      if (needle.empty()) return Value::of(int64_t(s.size() + 1));
      int64_t count = 0;
      for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + needle.size()))
        ++count;
      return Value::of(count);
    }
    // split(sep=None, maxsplit=-1)
    const Value* sep_value = argument(a, 0, "sep");
    const Value* max_value = argument(a, 1, "maxsplit");
    int64_t maxsplit = max_value && max_value->is_data() && is_integer(max_value->data)
                           ? as_int(max_value->data)
                           : -1;
    Json out = Json::array();
    if (sep_value == nullptr || sep_value->is_none()) {
      size_t i = 0;
      while (true) {
        while (i < s.size() && is_space(s[i])) ++i;
        if (i >= s.size()) break;
        if (maxsplit == 0) {
          out.push_back(strip_chars(s.substr(i), "", false, true));
          break;
        }
        size_t j = i;
        while (j < s.size() && !is_space(s[j])) ++j;
        out.push_back(s.substr(i, j - i));
        --maxsplit;
        i = j;
      }
      return Value::of(std::move(out));
    }
    if (!sep_value->is_string() || sep_value->data.get<std::string>().empty())
      error(pos, "split() separator must be a non-empty string");
    const std::string sep = sep_value->data.get<std::string>();
    size_t i = 0;
    while (true) {
      const size_t j = maxsplit == 0 ? std::string::npos : s.find(sep, i);
      if (j == std::string::npos) {
        out.push_back(s.substr(i));
        break;
      }
      out.push_back(s.substr(i, j - i));
      i = j + sep.size();
      --maxsplit;
    }
    return Value::of(std::move(out));
  }

  // Applies test `name` (with extra arguments) to `v`, as the select/reject filters also do.
  bool apply_test(const std::string& name, const Value& v, const std::vector<Value>& extra,
                  size_t pos) {
    auto operand = [&]() -> const Value& {
      if (extra.empty()) error(pos, "test '" + name + "' needs an argument");
      return extra[0];
    };
    auto numeric = [&](const Value& x) {
      return x.is_data() && x.data.is_number() && !x.data.is_boolean();
    };
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.is_none();
    if (name == "boolean") return v.is_data() && v.data.is_boolean();
    if (name == "true") return v.is_data() && v.data.is_boolean() && v.data.get<bool>();
    if (name == "false") return v.is_data() && v.data.is_boolean() && !v.data.get<bool>();
    if (name == "string") return v.is_string();
    if (name == "number") return numeric(v);
    if (name == "integer") return v.is_data() && v.data.is_number_integer();
    if (name == "float") return v.is_data() && v.data.is_number_float();
    if (name == "mapping")
      return (v.is_data() && v.data.is_object()) || v.kind == Value::Kind::Namespace;
    if (name == "sequence" || name == "iterable")
      return v.is_data() && (v.data.is_array() || v.data.is_string() || v.data.is_object());
    if (name == "callable") return v.kind == Value::Kind::Callable;
    if (name == "lower" || name == "upper") {
      if (!v.is_string()) return false;
      const std::string s = v.data.get<std::string>();
      return name == "lower" ? lower(s) == s : upper(s) == s;
    }
    if (name == "odd" || name == "even" || name == "divisibleby") {
      if (!v.is_data() || !is_integer(v.data)) error(pos, "test '" + name + "' needs an integer");
      const int64_t x = as_int(v.data);
      if (name == "odd") return x % 2 != 0;
      if (name == "even") return x % 2 == 0;
      const Value& d = operand();
      if (!d.is_data() || !is_integer(d.data) || as_int(d.data) == 0)
        error(pos, "divisibleby needs a non-zero integer");
      return as_int(d.data) == -1 || x % as_int(d.data) == 0;  // INT64_MIN % -1 would trap
    }
    if (name == "equalto" || name == "eq" || name == "==" || name == "sameas")
      return values_equal(v, operand());
    if (name == "ne" || name == "!=") return !values_equal(v, operand());
    if (name == "in") return contains(operand(), v, pos);
    if (name == "gt" || name == "ge" || name == "lt" || name == "le" || name == ">" ||
        name == ">=" || name == "<" || name == "<=") {
      const std::string op = name == "gt"   ? ">"
                             : name == "ge" ? ">="
                             : name == "lt" ? "<"
                             : name == "le" ? "<="
                                            : name;
      return compare(v, operand(), op, pos);
    }
    error(pos, "unknown test '" + name + "'");
  }

  bool test(const Expr& e) {
    const Value v = eval(*e.args[0]);
    std::vector<Value> extra;
    for (size_t i = 1; i < e.args.size(); ++i) extra.push_back(eval(*e.args[i]));
    return apply_test(e.text, v, extra, e.pos);
  }

  bool contains(const Value& container, const Value& item, size_t pos) {
    if (container.is_data()) {
      const Json& c = container.data;
      if (c.is_string()) {
        if (!item.is_string()) error(pos, "'in <string>' requires a string on the left");
        return c.get_ref<const std::string&>().find(item.data.get<std::string>()) !=
               std::string::npos;
      }
      if (c.is_array()) {
        for (const Json& x : c)
          if (values_equal(Value::of(x), item)) return true;
        return false;
      }
      if (c.is_object()) return item.is_string() && c.contains(item.data.get<std::string>());
    }
    if (container.kind == Value::Kind::Namespace)
      return item.is_string() && container.attributes->contains(item.data.get<std::string>());
    error(pos, fmt::format("'in' needs a string, list or dict on the right, not a {}",
                           type_name(container)));
  }

  bool compare(const Value& a, const Value& b, const std::string& op, size_t pos) {
    if (op == "==") return values_equal(a, b);
    if (op == "!=") return !values_equal(a, b);
    int order;
    if (a.is_data() && b.is_data() && (a.data.is_number() || a.data.is_boolean()) &&
        (b.data.is_number() || b.data.is_boolean())) {
      const double x = as_double(a.data), y = as_double(b.data);
      order = x < y ? -1 : x > y ? 1 : 0;
    } else if (a.is_string() && b.is_string()) {
      order = a.data.get<std::string>().compare(b.data.get<std::string>());
    } else {
      error(pos, fmt::format("'{}' is not supported between a {} and a {}", op, type_name(a),
                             type_name(b)));
    }
    if (op == "<") return order < 0;
    if (op == "<=") return order <= 0;
    if (op == ">") return order > 0;
    return order >= 0;
  }

  Value binary(const Expr& e) {
    const std::string& op = e.text;
    if (op == "and") {
      Value a = eval(*e.args[0]);
      return truthy(a) ? eval(*e.args[1]) : a;
    }
    if (op == "or") {
      Value a = eval(*e.args[0]);
      return truthy(a) ? a : eval(*e.args[1]);
    }
    const Value a = eval(*e.args[0]);
    const Value b = eval(*e.args[1]);
    if (op == "~") {
      std::string joined = python_str(a) + python_str(b);
      if (joined.size() > kMaxOutput) error(e.pos, "string concatenation is too long");
      return Value::of(std::move(joined));
    }
    if (op == "in") return Value::of(contains(b, a, e.pos));
    if (op == "not in") return Value::of(!contains(b, a, e.pos));
    if (op == "==" || op == "!=" || op == "<" || op == "<=" || op == ">" || op == ">=")
      return Value::of(compare(a, b, op, e.pos));
    auto mismatch = [&]() {
      error(e.pos, fmt::format("unsupported operand types for {}: {} and {}", op, type_name(a),
                               type_name(b)));
    };
    if (!a.is_data() || !b.is_data()) mismatch();
    const Json& x = a.data;
    const Json& y = b.data;
    const bool numbers = (x.is_number() || x.is_boolean()) && (y.is_number() || y.is_boolean());
    if (op == "+") {
      if (x.is_string() && y.is_string()) {
        if (x.get_ref<const std::string&>().size() + y.get_ref<const std::string&>().size() >
            kMaxOutput)
          error(e.pos, "string concatenation is too long");
        return Value::of(x.get<std::string>() + y.get<std::string>());
      }
      if (x.is_array() && y.is_array()) {
        if (x.size() + y.size() > kMaxOutput / 64) error(e.pos, "list concatenation is too long");
        Json out = x;
        for (const Json& item : y) out.push_back(item);
        return Value::of(std::move(out));
      }
    }
    if (op == "*" && ((x.is_string() && is_integer(y)) || (is_integer(x) && y.is_string()))) {
      const std::string s = x.is_string() ? x.get<std::string>() : y.get<std::string>();
      const int64_t times = x.is_string() ? as_int(y) : as_int(x);
      if (times * int64_t(s.size()) > (int64_t{1} << 24))
        error(e.pos, "string repetition is too long");
      std::string out;
      for (int64_t i = 0; i < times; ++i) out += s;
      return Value::of(out);
    }
    if (!numbers) mismatch();
    const bool ints = is_integer(x) && is_integer(y);
    if (op == "/") {
      if (as_double(y) == 0) error(e.pos, "division by zero");
      return Value::of(as_double(x) / as_double(y));
    }
    if (ints) {
      const int64_t p = as_int(x), q = as_int(y);
      // Python's ints do not overflow; int64 does, and that is an error here, not wrap-around.
      int64_t r = 0;
      auto overflow = [&]() { error(e.pos, fmt::format("integer overflow in {}", op)); };
      if (op == "+") return Value::of(__builtin_add_overflow(p, q, &r) ? (overflow(), r) : r);
      if (op == "-") return Value::of(__builtin_sub_overflow(p, q, &r) ? (overflow(), r) : r);
      if (op == "*") return Value::of(__builtin_mul_overflow(p, q, &r) ? (overflow(), r) : r);
      if (op == "**") {
        if (q < 0) return Value::of(std::pow(double(p), double(q)));
        if (p == 0 || p == 1) return Value::of(q == 0 ? 1 : p);
        if (p == -1) return Value::of(q % 2 == 0 ? 1 : -1);
        r = 1;  // |p| >= 2: overflows within 63 factors
        for (int64_t i = 0; i < q; ++i)
          if (__builtin_mul_overflow(r, p, &r)) overflow();
        return Value::of(r);
      }
      if (q == 0) error(e.pos, "integer division or modulo by zero");
      if (p == INT64_MIN && q == -1) overflow();
      // Python rounds // toward negative infinity and gives % the divisor's sign.
      int64_t quotient = p / q, remainder = p % q;
      if (remainder != 0 && ((remainder < 0) != (q < 0))) {
        --quotient;
        remainder += q;
      }
      return Value::of(op == "//" ? quotient : remainder);
    }
    const double p = as_double(x), q = as_double(y);
    if (op == "+") return Value::of(p + q);
    if (op == "-") return Value::of(p - q);
    if (op == "*") return Value::of(p * q);
    if (op == "**") return Value::of(std::pow(p, q));
    if (q == 0) error(e.pos, "float division or modulo by zero");
    const double floor_quotient = std::floor(p / q);
    return Value::of(op == "//" ? floor_quotient : p - q * floor_quotient);
  }

  Value filter(const Expr& e) {
    const Value v = eval(*e.args[0]);
    const Args a = evaluate_arguments(e, 1);
    const std::string& f = e.text;
    auto need_string = [&]() -> std::string {
      if (v.is_undefined()) return "";
      return python_str(v);
    };
    auto need_list = [&]() { return iterate(v, e.pos); };
    if (f == "trim")
      return Value::of(
          strip_chars(need_string(), string_argument(a, 0, "chars", e.pos, ""), true, true));
    if (f == "upper") return Value::of(upper(need_string()));
    if (f == "lower") return Value::of(lower(need_string()));
    if (f == "capitalize") return Value::of(capitalize(need_string()));
    if (f == "title") return Value::of(title_case(need_string()));
    if (f == "string") return Value::of(need_string());
    if (f == "safe") return v;
    if (f == "replace")
      return Value::of(replace_all(need_string(), string_argument(a, 0, "old", e.pos, ""),
                                   string_argument(a, 1, "new", e.pos, "")));
    if (f == "length" || f == "count") {
      if (v.is_string()) return Value::of(int64_t(v.data.get<std::string>().size()));
      if (v.kind == Value::Kind::Namespace) return Value::of(int64_t(v.attributes->size()));
      if (v.is_data() && (v.data.is_array() || v.data.is_object()))
        return Value::of(int64_t(v.data.size()));
      if (v.is_undefined()) return Value::of(int64_t(0));
      error(e.pos, fmt::format("a {} has no length", type_name(v)));
    }
    if (f == "tojson") {
      const Value* indent = argument(a, 0, "indent");
      int width = -1;
      if (indent != nullptr && !indent->is_none()) {
        if (!indent->is_data() || !is_integer(indent->data))
          error(e.pos, "tojson indent must be an integer");
        width = int(std::clamp<int64_t>(as_int(indent->data), 0, 64));
      }
      return Value::of(python_json_dumps(to_json(v, e.pos), width));
    }
    if (f == "default" || f == "d") {
      const Value* fallback = argument(a, 0, "default_value");
      const Value* boolean = argument(a, 1, "boolean");
      const bool use_fallback =
          v.is_undefined() || (boolean != nullptr && truthy(*boolean) && !truthy(v));
      if (!use_fallback) return v;
      return fallback ? *fallback : Value::of("");
    }
    if (f == "int") {
      if (v.is_data() && (v.data.is_number() || v.data.is_boolean())) {
        if (is_integer(v.data)) return Value::of(as_int(v.data));
        const double d = std::trunc(as_double(v.data));
        if (!(d >= -0x1p63 && d < 0x1p63)) error(e.pos, "int of a float outside the 64-bit range");
        return Value::of(int64_t(d));
      }
      if (v.is_string()) {
        try {
          return Value::of(
              int64_t(std::stoll(strip_chars(v.data.get<std::string>(), "", true, true))));
        } catch (const std::exception&) {
        }
      }
      const Value* fallback = argument(a, 0, "default");
      return fallback ? *fallback : Value::of(int64_t(0));
    }
    if (f == "float") {
      if (v.is_data() && (v.data.is_number() || v.data.is_boolean()))
        return Value::of(as_double(v.data));
      if (v.is_string()) {
        try {
          return Value::of(std::stod(v.data.get<std::string>()));
        } catch (const std::exception&) {
        }
      }
      return Value::of(0.0);
    }
    if (f == "abs") {
      if (!v.is_number()) error(e.pos, "abs needs a number");
      if (is_integer(v.data)) {
        if (as_int(v.data) == INT64_MIN) error(e.pos, "integer overflow in abs");
        return Value::of(std::abs(as_int(v.data)));
      }
      return Value::of(std::abs(as_double(v.data)));
    }
    if (f == "list") {
      Json out = Json::array();
      for (Json& x : need_list()) out.push_back(std::move(x));
      return Value::of(std::move(out));
    }
    if (f == "first" || f == "last") {
      const std::vector<Json> items = need_list();
      if (items.empty()) return Value::undefined("the " + f + " item of an empty sequence");
      return Value::of(f == "first" ? items.front() : items.back());
    }
    if (f == "reverse") {
      if (v.is_string()) {
        std::string s = v.data.get<std::string>();
        std::reverse(s.begin(), s.end());
        return Value::of(s);
      }
      std::vector<Json> items = need_list();
      std::reverse(items.begin(), items.end());
      return Value::of(Json(items));
    }
    if (f == "join") {
      const std::string separator = string_argument(a, 0, "d", e.pos, "");
      const Value* attribute_name = argument(a, 1, "attribute");
      std::string out;
      bool first = true;
      for (const Json& item : need_list()) {
        Value x = Value::of(item);
        if (attribute_name != nullptr) x = attribute(x, python_str(*attribute_name), e.pos);
        out += (first ? "" : separator) + python_str(x);
        if (out.size() > kMaxOutput) error(e.pos, "join produces too long a string");
        first = false;
      }
      return Value::of(out);
    }
    if (f == "items") {
      if (!v.is_data() || !v.data.is_object()) error(e.pos, "items needs a dict");
      return method(v, "items", {}, e.pos);
    }
    if (f == "map") {
      Json out = Json::array();
      const auto attribute_it = a.named.find("attribute");
      const Value* attribute_name = attribute_it == a.named.end() ? nullptr : &attribute_it->second;
      for (const Json& item : need_list()) {
        if (attribute_name != nullptr) {
          Value x = attribute(Value::of(item), python_str(*attribute_name), e.pos);
          if (x.is_undefined()) {
            if (auto it = a.named.find("default"); it != a.named.end()) x = it->second;
          }
          out.push_back(to_json(x, e.pos));
        } else {
          if (a.positional.empty() || !a.positional[0].is_string())
            error(e.pos, "map needs a filter name or attribute=");
          out.push_back(to_json(
              apply_named_filter(a.positional[0].data.get<std::string>(), Value::of(item), e.pos),
              e.pos));
        }
      }
      return Value::of(std::move(out));
    }
    if (f == "select" || f == "reject" || f == "selectattr" || f == "rejectattr") {
      const bool by_attribute = f == "selectattr" || f == "rejectattr";
      const bool keep_matches = f == "select" || f == "selectattr";
      size_t next_arg = 0;
      std::string attribute_name;
      if (by_attribute) {
        if (a.positional.empty() || !a.positional[0].is_string())
          error(e.pos, f + " needs an attribute name");
        attribute_name = a.positional[0].data.get<std::string>();
        next_arg = 1;
      }
      std::optional<std::string> test_name;
      if (next_arg < a.positional.size()) {
        if (!a.positional[next_arg].is_string()) error(e.pos, f + " needs a test name");
        test_name = a.positional[next_arg].data.get<std::string>();
      }
      const std::vector<Value> extra(
          a.positional.begin() + std::min(a.positional.size(), next_arg + 1), a.positional.end());
      Json out = Json::array();
      for (const Json& item : need_list()) {
        Value x = Value::of(item);
        if (by_attribute) x = attribute(x, attribute_name, e.pos);
        const bool match = test_name ? apply_test(*test_name, x, extra, e.pos) : truthy(x);
        if (match == keep_matches) out.push_back(item);
      }
      return Value::of(std::move(out));
    }
    if (f == "unique") {
      Json out = Json::array();
      for (const Json& item : need_list())
        if (std::find(out.begin(), out.end(), item) == out.end()) out.push_back(item);
      return Value::of(std::move(out));
    }
    error(e.pos, "unknown filter '" + f + "'");
  }

  // A filter given by name (map('upper')): only argument-free filters.
  Value apply_named_filter(const std::string& name, const Value& v, size_t pos) {
    Expr e;
    e.kind = Expr::Kind::Filter;
    e.pos = pos;
    e.text = name;
    e.args.push_back(
        std::make_unique<Expr>(Expr{Expr::Kind::Literal, pos, "", to_json(v, pos), {}, {}, false}));
    return filter(e);
  }

  const Source& src_;
  std::vector<std::map<std::string, Value>> scopes_;
  int64_t steps_ = 0;  // run() calls and loop iterations so far
};

void dump(const Json& j, int indent, int depth, std::string& out) {
  auto newline = [&](int level) {
    out += '\n';
    out.append(size_t(indent) * size_t(level), ' ');
  };
  switch (j.type()) {
    case Json::value_t::null:
      out += "null";
      return;
    case Json::value_t::boolean:
      out += j.get<bool>() ? "true" : "false";
      return;
    case Json::value_t::number_integer:
      out += std::to_string(j.get<int64_t>());
      return;
    case Json::value_t::number_unsigned:
      out += std::to_string(j.get<uint64_t>());
      return;
    case Json::value_t::number_float: {
      const double d = j.get<double>();
      out += std::isnan(d)   ? "NaN"
             : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity")
                             : python_float(d);
      return;
    }
    case Json::value_t::string: {
      out += '"';
      for (unsigned char c : j.get_ref<const std::string&>()) {
        switch (c) {
          case '"':
            out += "\\\"";
            break;
          case '\\':
            out += "\\\\";
            break;
          case '\n':
            out += "\\n";
            break;
          case '\r':
            out += "\\r";
            break;
          case '\t':
            out += "\\t";
            break;
          case '\b':
            out += "\\b";
            break;
          case '\f':
            out += "\\f";
            break;
          default:
            if (c < 0x20)
              out += fmt::format("\\u{:04x}", c);
            else
              out += char(c);
        }
      }
      out += '"';
      return;
    }
    case Json::value_t::array:
    case Json::value_t::object: {
      const bool object = j.is_object();
      out += object ? '{' : '[';
      if (j.empty()) {
        out += object ? '}' : ']';
        return;
      }
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (!first) out += indent >= 0 ? "," : ", ";
        first = false;
        if (indent >= 0) newline(depth + 1);
        if (object) {
          dump(Json(it.key()), indent, depth + 1, out);
          out += ": ";
        }
        dump(it.value(), indent, depth + 1, out);
      }
      if (indent >= 0) newline(depth);
      out += object ? '}' : ']';
      return;
    }
    default:
      out += "null";
      return;
  }
}

}  // namespace

std::string python_json_dumps(const Json& value, int indent) {
  std::string out;
  dump(value, indent, 0, out);
  return out;
}

struct Template::Impl {
  Source source;
  Body body;
};

Template::Template(std::string source, std::string name) {
  // Jinja2 normalises newlines and drops one trailing newline (keep_trailing_newline=False).
  std::string text;
  text.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      text += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      text += source[i];
    }
  }
  if (!text.empty() && text.back() == '\n') text.pop_back();
  impl_ = std::make_unique<Impl>(Impl{Source(std::move(text), std::move(name)), {}});
  Parser parser(impl_->source, lex(impl_->source));
  impl_->body = parser.parse_template();
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const Json& variables) const {
  if (!variables.is_object()) throw Error("template variables must be a JSON object");
  Renderer renderer(impl_->source, variables);
  std::string out;
  renderer.run(impl_->body, out);
  return out;
}

}  // namespace subbit::jinja
