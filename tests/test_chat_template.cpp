// The Jinja subset of src/chat against Jinja2 itself (configured as transformers configures it,
// tests/jinja_reference.py): real chat templates of the supported model families and edge
// cases must render byte for byte the same, and fail where Jinja2 fails. Skips cleanly when
// python3 or jinja2 is absent.
#include <fstream>
#include <sstream>

#include "chat/chat_format.h"
#include "chat/jinja.h"
#include "common/error.h"
#include "test_support.h"

namespace subbit {
namespace {

using jinja::Json;
namespace fs = std::filesystem;

struct Case {
  std::string label;
  std::string source;
  Json variables;
};

bool jinja2_available() {
  static const bool available = testing::run_command("python3 -c 'import jinja2'").exit_code == 0;
  return available;
}

// Renders every case with Jinja2 in one python3 process.
Json render_with_jinja2(const std::vector<Case>& cases) {
  Json input = Json::array();
  for (const Case& c : cases) input.push_back({{"template", c.source}, {"variables", c.variables}});
  const fs::path dir = testing::temp_dir("jinja");
  std::ofstream(dir / "cases.json") << input.dump();
  const auto r = testing::run_command(
      "python3 " + (testing::source_dir() / "tests" / "jinja_reference.py").string() + " < " +
      (dir / "cases.json").string());
  fs::remove_all(dir);
  if (r.exit_code != 0) throw std::runtime_error("jinja_reference.py failed: " + r.err);
  return Json::parse(r.out);
}

void expect_same_as_jinja2(const std::vector<Case>& cases) {
  const Json reference = render_with_jinja2(cases);
  ASSERT_EQ(reference.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    std::string ours, our_error;
    try {
      ours = jinja::Template(c.source, c.label).render(c.variables);
    } catch (const Error& e) {
      our_error = e.what();
    }
    if (reference[i]["ok"].get<bool>()) {
      EXPECT_EQ(our_error, "") << c.label;
      EXPECT_EQ(ours, reference[i]["text"].get<std::string>()) << c.label;
    } else {
      EXPECT_NE(our_error, "") << c.label << ": Jinja2 failed (" << reference[i]["error"]
                               << ") but we rendered: " << ours;
    }
  }
}

std::string read(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

Json conversations() {
  const Json tool = {
      {"type", "function"},
      {"function",
       {{"name", "get_weather"},
        {"description", "Weather in a city, \"now\"."},
        {"parameters",
         {{"type", "object"},
          {"properties", {{"city", {{"type", "string"}}}, {"days", {{"type", "integer"}}}}},
          {"required", Json::array({"city"})}}}}}};
  Json list = Json::array();
  list.push_back({{"name", "single user turn"},
                  {"messages", Json::array({{{"role", "user"}, {"content", "Hello!"}}})}});
  list.push_back(
      {{"name", "system and two turns"},
       {"messages", Json::array({{{"role", "system"}, {"content", "  Be brief.\n"}},
                                 {{"role", "user"}, {"content", "What is 2+2?"}},
                                 {{"role", "assistant"}, {"content", " 4. "}},
                                 {{"role", "user"},
                                  {"content", "And 3+3? Quote: \"x\" 'y' {{ not jinja }}"}}})}});
  list.push_back({{"name", "unicode and newlines"},
                  {"messages", Json::array({{{"role", "user"},
                                             {"content", "Grüße, 世界 🙂\n\nline two\t"}},
                                            {{"role", "assistant"}, {"content", "Olá"}}})}});
  list.push_back({{"name", "roles out of order"},
                  {"messages", Json::array({{{"role", "assistant"}, {"content", "first"}},
                                            {{"role", "assistant"}, {"content", "second"}}})}});
  list.push_back(
      {{"name", "tool call"},
       {"tools", Json::array({tool})},
       {"messages",
        Json::array(
            {{{"role", "system"}, {"content", "You route tools."}},
             {{"role", "user"}, {"content", "Weather in Paris?"}},
             {{"role", "assistant"},
              {"content", ""},
              {"tool_calls", Json::array({{{"id", "call12345"},
                                           {"type", "function"},
                                           {"function",
                                            {{"name", "get_weather"},
                                             {"arguments", {{"city", "Paris"}, {"days", 2}}}}}}})}},
             {{"role", "tool"}, {"tool_call_id", "call12345"}, {"content", "{\"temp\": 21.5}"}},
             {{"role", "assistant"}, {"content", "21.5 degrees."}},
             {{"role", "user"}, {"content", "Thanks"}}})}});
  return list;
}

TEST(ChatTemplate, ModelTemplatesMatchJinja2) {
  if (!jinja2_available()) GTEST_SKIP() << "python3 with jinja2 is absent (skipped)";
  const fs::path dir = testing::source_dir() / "tests" / "data" / "chat_templates";
  std::vector<Case> cases;
  for (const char* name :
       {"llama3", "llama3.1", "qwen2.5", "smollm2", "mistral-v0.1", "mistral-v0.3"}) {
    const std::string source = read(dir / (std::string(name) + ".jinja"));
    ASSERT_FALSE(source.empty()) << name;
    for (const Json& conversation : conversations()) {
      for (bool generation_prompt : {false, true}) {
        Json variables = {{"messages", conversation["messages"]},
                          {"add_generation_prompt", generation_prompt},
                          {"bos_token", "<s>"},
                          {"eos_token", "</s>"}};
        if (conversation.contains("tools")) variables["tools"] = conversation["tools"];
        cases.push_back({fmt::format("{} / {} / generation prompt {}", name,
                                     conversation["name"].get<std::string>(), generation_prompt),
                         source, variables});
      }
    }
  }
  // Llama 3.1 with built-in tools and tools in the system message.
  Json builtin = {
      {"messages", conversations()[4]["messages"]},
      {"add_generation_prompt", true},
      {"bos_token", "<|begin_of_text|>"},
      {"builtin_tools", Json::array({"brave_search", "code_interpreter", "get_weather"})},
      {"tools_in_user_message", false},
      {"tools", conversations()[4]["tools"]}};
  cases.push_back({"llama3.1 / builtin tools", read(dir / "llama3.1.jinja"), builtin});
  expect_same_as_jinja2(cases);
}

TEST(ChatTemplate, EdgeCasesMatchJinja2) {
  if (!jinja2_available()) GTEST_SKIP() << "python3 with jinja2 is absent (skipped)";
  const Json vars = {
      {"items", Json::array({{{"name", "a"}, {"n", 3}, {"on", true}},
                             {{"name", "B c"}, {"n", -7}, {"on", false}},
                             {{"name", "d"}, {"n", 0}}})},
      {"words", Json::array({"x", "yy", "", "zzz"})},
      {"d", {{"k1", 1}, {"k2", Json::array({1, 2.5, nullptr, true, "s"})}, {"k3", {{"z", "q"}}}}},
      {"s", "  Hello, World!  "},
      {"f", 1.0},
      {"big", 1e20},
      {"nothing", nullptr},
      {"quote", "it's \"quoted\"\\ \u00e9\n"}};
  const std::vector<std::string> sources = {
      // whitespace control, trim_blocks and lstrip_blocks
      "a\n  {% if true %}\n  x\n  {% endif %}\nb\n",
      "a  {%- if true -%}  x  {%- endif -%}  b",
      "a\n  {%+ if true %}x{% endif +%}\nb",
      "{# comment #}\n  {#- another -#}  text\n{{ 1 }}\n{{- 2 -}}\n 3",
      "  {% for w in words %}\n    [{{ w }}]\n  {% endfor %}\nend",
      "line\n    {% set x = 1 %}    tail {{ x }}",
      "{{ '{{' }} {{ \"}}\" }} {{ {'a': {'b': 1}}['a']['b'] }}",
      // loops
      "{% for i in items %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ "
      "loop.revindex0 }}/"
      "{{ loop.first }}/{{ loop.last }}/{{ loop.length }};{% endfor %}",
      "{% for w in words if w %}{{ w }}{{ ',' if not loop.last }}{% endfor %}",
      "{% for w in [] %}x{% else %}empty{% endfor %}",
      "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 5 %}{% break %}{% "
      "endif %}{{ i }}{% endfor %}",
      "{% for a in [1, 2] %}{% for b in [3, 4] %}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{{ "
      "loop.index }}|{% endfor %}",
      "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}",
      "{% for k, v in d | items %}{{ k }}{% endfor %}{% for c in 'héllo' %}{{ c }}.{% endfor %}",
      "{% for i in items %}{{ loop.previtem.name if loop.previtem }}>{{ loop.nextitem.name if "
      "loop.nextitem }} {% endfor %}",
      // scoping and namespace
      "{% set x = 1 %}{% for i in [1, 2] %}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}",
      "{% set ns = namespace(total=0, seen=[]) %}{% for i in items %}{% set ns.total = ns.total + "
      "i.n %}{% endfor %}{{ ns.total }}",
      "{% if true %}{% set y = 5 %}{% endif %}{{ y }}",
      // arithmetic and operators
      "{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1.5 * 2 "
      "}} {{ 10 - 2.5 }}",
      "{{ 'ab' * 3 }} {{ 3 * 'x' }} {{ 1 ~ 'a' ~ none ~ true }} {{ [1] + [2, 3] }} {{ -(3) }} {{ "
      "+4 }}",
      "{{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ 2 >= 3 }} {{ 'ell' in 'hello' }} {{ 2 in [1, 2] }} {{ "
      "'k1' in d }} {{ 'x' not in words }}",
      "{{ true and 'x' }} {{ false or 'y' }} {{ nothing or 'z' }} {{ not nothing }} {{ 'a' if "
      "false }} {{ 'a' if false else 'b' }}",
      // printing values the Python way
      "{{ f }} {{ big }} {{ 0.1 }} {{ nothing }} {{ true }} {{ d }} {{ words }} {{ quote }} {{ "
      "[quote] }} {{ missing }}|",
      "{{ d.k2[1] }} {{ d['k3'].z }} {{ words[-1] }} {{ words[1:3] }} {{ words[::-1] }} {{ s[2:7] "
      "}} {{ s[-4:] }} {{ d.k9 }}|",
      // filters
      "{{ s | trim }}|{{ s | upper }}|{{ s | lower }}|{{ 'hello wORLD' | title }}|{{ 'hello wORLD' "
      "| capitalize }}|{{ s | length }}",
      "{{ words | join(', ') }}|{{ words | length }}|{{ words | first }}|{{ words | last }}|{{ "
      "words | reverse | list }}",
      "{{ items | map(attribute='name') | join('+') }}|{{ words | map('upper') | list }}|{{ words "
      "| select | list }}|{{ words | reject | list }}",
      "{{ items | selectattr('on') | map(attribute='name') | list }}|{{ items | rejectattr('on') | "
      "list | length }}",
      "{{ items | selectattr('name', 'equalto', 'd') | list }}|{{ items | selectattr('on', "
      "'defined') | list | length }}",
      "{{ missing | default('dflt') }}|{{ '' | default('empty', true) }}|{{ 0 | default(5) }}|{{ "
      "nothing | d('n') }}",
      "{{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ quote | tojson }}|{{ [] | tojson }}|{{ {} | "
      "tojson(indent=4) }}|{{ f | tojson }}",
      "{{ '42' | int + 1 }} {{ 3.9 | int }} {{ 'x' | int }} {{ '2.5' | float }} {{ -3 | abs }} {{ "
      "5 | string + '!' }} {{ 'aXbX' | replace('X', '-') }}",
      "{{ [1, 2, 1, 3, 2] | unique | list }} {{ d | length }} {{ items | count }} {{ s | trim('! "
      "') }}",
      // methods
      "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ 'xxaxx'.strip('x') }}|{{ s.upper() "
      "}}|{{ s.lower() }}",
      "{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }} {{ "
      "s.strip().startswith('Hello') }} {{ s.endswith('x') }}",
      "{{ 'aaa'.replace('a', 'bb') }} {{ d.get('k1') }} {{ d.get('nope', 'fallback') }} {{ "
      "d.keys() | list }} {{ d.values() | list | length }}",
      "{{ 'hello'.find('l') }} {{ 'hello'.count('l') }} {{ 'hello world'.title() }} {{ "
      "'hELLO'.capitalize() }}",
      // tests
      "{{ missing is defined }} {{ missing is undefined }} {{ nothing is none }} {{ 'x' is string "
      "}} {{ 1 is number }} {{ d is mapping }}",
      "{{ words is iterable }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is "
      "divisibleby(4) }} {{ 'a' is in 'abc' }}",
      "{{ 1 is equalto 1 }} {{ nothing is not none }} {{ 'abc' is lower }} {{ f is float }} {{ 2 "
      "is integer }} {{ true is boolean }}",
      // literals
      "{{ 'a\\nb' }} {{ \"tab\\there\" }} {{ 'con' 'cat' }} {{ 1_000 }} {{ 1e3 }} {{ 2.50 }} {{ "
      "True }} {{ None }}",
      "{{ [1, 'two', [3]] }} {{ {'k': [1, {'n': none}]} }} {{ ({'a': 1}).a }}",
      // errors Jinja2 raises too
      "{{ raise_exception('stop here') }}",
      "{{ 'a' + 1 }}",
      "{{ missing.attribute }}",
      "{{ 1 // 0 }}",
  };
  std::vector<Case> cases;
  for (size_t i = 0; i < sources.size(); ++i)
    cases.push_back({fmt::format("edge case {}: {}", i, sources[i]), sources[i], vars});
  expect_same_as_jinja2(cases);
}

std::string render_error(const std::string& source, const Json& variables = Json::object()) {
  try {
    jinja::Template(source, "t").render(variables);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ChatTemplate, UnsupportedConstructsNameThePosition) {
  EXPECT_EQ(render_error("ab\n{% macro m() %}x{% endmacro %}"),
            "t:2:4: unsupported statement 'macro' (this renderer implements if, for, set, break, "
            "continue)");
  EXPECT_EQ(render_error("{{ x | nosuchfilter }}", {{"x", 1}}),
            "t:1:8: unknown filter 'nosuchfilter'");
  EXPECT_EQ(render_error("{{ x is nosuchtest }}", {{"x", 1}}), "t:1:9: unknown test 'nosuchtest'");
  EXPECT_EQ(render_error("text {{ x "), "t:1:6: tag is never closed with }}");
  EXPECT_EQ(render_error("{% if x %}open"), "t:1:15: missing {% endif %}");
  EXPECT_EQ(render_error("{# open"), "t:1:1: comment is never closed with #}");
  EXPECT_EQ(render_error("{{ 'open }}"), "t:1:4: string literal is never closed");
  EXPECT_EQ(render_error("{{ a ; b }}"), "t:1:6: unexpected character ';' in a tag");
  EXPECT_EQ(render_error("\n\n  {{ raise_exception('bad roles') }}"),
            "t:3:6: the template raised an error: bad roles");
  EXPECT_EQ(render_error("{{ m.content.x }}", {{"m", Json::object()}}),
            "t:1:14: attribute 'content' of a dict is undefined (reading its attribute 'x')");
  EXPECT_EQ(render_error("{% include 'x' %}"),
            "t:1:4: unsupported statement 'include' (this renderer implements if, for, set, break, "
            "continue)");
}

// A template comes with a downloaded model: one that nests without end, loops without end or
// grows its strings without end is refused with an error, never a crash, a hang or all memory.
TEST(ChatTemplate, HostileTemplatesHitBudgetsNotTheStack) {
  auto contains = [](const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
  };
  EXPECT_TRUE(contains(
      render_error("{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}"),
      "nested more than"));
  EXPECT_TRUE(contains(render_error("{{ " + std::string(50000, '-') + "1 }}"), "nested more than"));
  std::string chain = "{{ 1";
  for (int i = 0; i < 50000; ++i) chain += " + 1";
  EXPECT_TRUE(contains(render_error(chain + " }}"), "expression nested more than"));
  std::string blocks;
  for (int i = 0; i < 5000; ++i) blocks += "{% if true %}";
  EXPECT_TRUE(contains(render_error(blocks), "nested more than"));
  EXPECT_TRUE(contains(
      render_error(
          "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"),
      "steps"));
  EXPECT_TRUE(contains(
      render_error("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(100) %}"
                   "{% set ns.s = ns.s ~ ns.s %}{% endfor %}"),
      "too long"));
  EXPECT_TRUE(contains(
      render_error("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(100) %}"
                   "{% set ns.s = ns.s + ns.s %}{% endfor %}"),
      "too long"));
  // Python's integers do not overflow and int64 must not wrap (or be undefined behaviour).
  for (const char* overflowing : {"{{ 9223372036854775807 + 1 }}", "{{ 3 ** 40 }}",
                                  "{{ 4611686018427387904 * 2 }}", "{{ 1e300 | int }}"})
    EXPECT_TRUE(contains(render_error(overflowing), "overflow") ||
                contains(render_error(overflowing), "range"))
        << overflowing;
}

TEST(ChatTemplate, PlainFallbackWithoutTemplate) {
  const chat::ChatFormat plain("", "model", "<s>", "</s>");
  EXPECT_FALSE(plain.has_template());
  const Json messages = Json::array({{{"role", "system"}, {"content", "Be brief."}},
                                     {{"role", "user"}, {"content", "Hi"}},
                                     {{"role", "assistant"}, {"content", "Hello."}},
                                     {{"role", "user"}, {"content", "Bye"}}});
  EXPECT_EQ(plain.apply(messages, true),
            "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: Bye\n\nAssistant:");
  EXPECT_EQ(plain.apply(messages, false),
            "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: Bye\n\n");
  EXPECT_EQ(plain.stop_strings(), (std::vector<std::string>{"\nUser:", "\nSystem:"}));
  EXPECT_THROW(plain.apply(Json::array(), true), Error);
  EXPECT_THROW(plain.apply(Json::array({{{"content", "no role"}}}), true), Error);
  EXPECT_THROW(plain.apply(Json::array({{{"role", "user"}, {"content", 5}}}), true), Error);
}

TEST(ChatTemplate, TemplateReceivesSpecialTokens) {
  const chat::ChatFormat format(
      "{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content }}{{ eos_token }}{% endfor "
      "%}"
      "{% if add_generation_prompt %}assistant:{% endif %}",
      "inline", "<s>", "</s>");
  EXPECT_TRUE(format.has_template());
  EXPECT_EQ(format.apply(Json::array({{{"role", "user"}, {"content", "x"}}}), true),
            "<s>user:x</s>assistant:");
  EXPECT_TRUE(format.stop_strings().empty());
}

}  // namespace
}  // namespace subbit
