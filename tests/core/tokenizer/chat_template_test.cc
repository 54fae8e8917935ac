// The chat-template renderer against real Jinja2 (chat_template_vectors.json, written by
// make_chat_template_vectors.py with transformers' settings), plus errors and model loading.
#include "core/tokenizer/chat_template.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

#include "core/io/file_util.h"
#include "core/io/json_file.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

using ::loraserve::testing::StatusIs;
using ::testing::HasSubstr;

TEST(ChatTemplateTest, MatchesJinja2OnRealTemplates) {
  ASSERT_OK_AND_ASSIGN(Json vectors, ReadJsonFile(testing::SourceDir() + "/tests/core/tokenizer/chat_template_vectors.json"));
  ASSERT_GE(vectors["cases"].size(), 9u);
  for (const Json& c : vectors["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    ASSERT_OK_AND_ASSIGN(ChatTemplate t, ChatTemplate::Parse(c["template"].get<std::string>()));
    absl::StatusOr<std::string> got = t.Render(c["context"]);
    if (c.contains("error")) {
      EXPECT_THAT(got, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c["error"].get<std::string>())));
    } else {
      ASSERT_OK(got.status());
      EXPECT_EQ(*got, c["expected"].get<std::string>());
    }
  }
}

TEST(ChatTemplateTest, WhitespaceControlAndBlocks) {
  auto render = [](const std::string& src, const Json& ctx = Json::object()) {
    auto t = ChatTemplate::Parse(src);
    EXPECT_OK(t.status());
    auto r = t.ok() ? t->Render(ctx) : absl::StatusOr<std::string>(t.status());
    EXPECT_OK(r.status());
    return r.ok() ? *r : std::string("<error>");
  };
  EXPECT_EQ(render("a  {%- if true -%}  b  {%- endif %}  c"), "ab  c");
  EXPECT_EQ(render("x\n  {% if true %}\ny\n  {% endif %}\nz"), "x\ny\nz");  // lstrip + trim blocks
  EXPECT_EQ(render("{{ '}}' }}{# {{ not rendered }} #}|{{ \"%}\" }}"), "}}|%}");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", Json{{"d", {{"a", 1}, {"b", "x"}}}}), "a=1;b=x;");
  EXPECT_EQ(render("{% for x in xs %}{{ loop.index }}/{{ loop.length }}{{ ',' if not loop.last }}{% endfor %}",
                   Json{{"xs", {5, 6, 7}}}), "1/3,2/3,3/3");
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{% endfor %}{{ x }}"), "1");  // loop scope
  EXPECT_EQ(render("{{ 'a,b' .split(',') | join('+') }} {{ [3,1,2] | first }} {{ 'Hi' is string }} {{ n is defined }}"),
            "a+b 3 True False");
}

TEST(ChatTemplateTest, ErrorsNameTheProblem) {
  EXPECT_THAT(ChatTemplate::Parse("{% if x %}never closed"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("endif")));
  EXPECT_THAT(ChatTemplate::Parse("{% macro m() %}{% endmacro %}"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unsupported statement")));
  EXPECT_THAT(ChatTemplate::Parse("{{ 'open"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ChatTemplate::Parse("{{ a +* }}"), StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_OK_AND_ASSIGN(ChatTemplate t, ChatTemplate::Parse("{{ x | frobnicate }}"));
  EXPECT_THAT(t.Render(Json::object()), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("frobnicate")));
}

TEST(ChatTemplateTest, IntegerOverflowIsAnErrorNotUndefinedBehaviour) {
  for (const char* expr : {"9223372036854775807 + 1", "(0 - 9223372036854775807) - 2", "4611686018427387904 * 2",
                           "(0 - 9223372036854775807 - 1) // (0 - 1)"}) {
    ASSERT_OK_AND_ASSIGN(ChatTemplate t, ChatTemplate::Parse(absl::StrCat("{{ ", expr, " }}")));
    EXPECT_THAT(t.Render(Json::object()), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overflow")))
        << expr;
  }
  ASSERT_OK_AND_ASSIGN(ChatTemplate floor, ChatTemplate::Parse("{{ (0 - 7) // 2 }} {{ (0 - 7) % 2 }} {{ big | int }}"));
  EXPECT_THAT(floor.Render(Json{{"big", 1e300}}), ::loraserve::testing::IsOkAndHolds(std::string("-4 1 0")));
}

TEST(ChatTemplateTest, MutatedTemplatesFailCleanly) {
  // 3000 seeded byte mutations of the real templates: each parses and renders or gives a status.
  ASSERT_OK_AND_ASSIGN(Json vectors, ReadJsonFile(testing::SourceDir() + "/tests/core/tokenizer/chat_template_vectors.json"));
  uint64_t state = 12345;
  auto next = [&state]() { state = state * 6364136223846793005ULL + 1442695040888963407ULL; return state >> 33; };
  const std::string alphabet = "{}%#-+'\"()[]|.,:=~ \nabcifsetndorxy0123456789";
  int parsed = 0, rendered = 0;
  for (int i = 0; i < 3000; ++i) {
    const Json& c = vectors["cases"][next() % vectors["cases"].size()];
    std::string src = c["template"].get<std::string>();
    for (int m = 0, n = 1 + next() % 4; m < n && !src.empty(); ++m) {
      const size_t at = next() % src.size();
      switch (next() % 3) {
        case 0: src.erase(at, 1 + next() % 3); break;
        case 1: src.insert(at, 1, alphabet[next() % alphabet.size()]); break;
        default: src[at] = alphabet[next() % alphabet.size()];
      }
    }
    auto t = ChatTemplate::Parse(src);
    if (!t.ok()) continue;
    ++parsed;
    rendered += t->Render(c["context"]).ok();
  }
  EXPECT_GT(parsed, 300);
  EXPECT_GT(rendered, 100);
}

TEST(ChatTemplateTest, LoadsFromAModelDirectory) {
  const std::string dir = testing::MakeTempDir();
  EXPECT_THAT(LoadModelChatTemplate(dir), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(WriteFileAtomically(JoinPath(dir, "tokenizer_config.json"),
                                Json{{"bos_token", {{"content", "<s>"}}}, {"eos_token", "</s>"},
                                     {"chat_template", Json::array({{{"name", "tool_use"}, {"template", "T"}},
                                                                    {{"name", "default"}, {"template", "{{ bos_token }}D"}}})}}
                                    .dump()));
  ASSERT_OK_AND_ASSIGN(ModelChatTemplate m, LoadModelChatTemplate(dir));
  EXPECT_EQ(m.bos_token, "<s>");
  EXPECT_EQ(m.eos_token, "</s>");
  EXPECT_THAT(m.chat_template.Render(Json{{"bos_token", m.bos_token}}), ::loraserve::testing::IsOkAndHolds(std::string("<s>D")));
  ASSERT_OK(WriteFileAtomically(JoinPath(dir, "chat_template.jinja"), "J{{ eos_token }}"));  // wins over the config
  ASSERT_OK_AND_ASSIGN(m, LoadModelChatTemplate(dir));
  EXPECT_THAT(m.chat_template.Render(Json{{"eos_token", "</s>"}}), ::loraserve::testing::IsOkAndHolds(std::string("J</s>")));
  ASSERT_OK(WriteFileAtomically(JoinPath(dir, "tokenizer_config.json"), "{not json"));
  EXPECT_FALSE(LoadModelChatTemplate(dir).ok());
}

}  // namespace
}  // namespace loraserve::core
