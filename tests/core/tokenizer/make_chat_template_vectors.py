"""Writes chat_template_vectors.json: chat templates (ChatML, Llama 2, Zephyr, and a Llama-3-style one
exercising namespaces, filtered loops, filters, slices and operators) rendered by real Jinja2
exactly as transformers' apply_chat_template renders them (ImmutableSandboxedEnvironment with
trim_blocks and lstrip_blocks, raise_exception). chat_template_test checks loraserve's renderer
against them. Run with a Python that has jinja2 (e.g. build/peft-live-venv/bin/python)."""
import json
import os

from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATES = {
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    "llama2": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
    "zephyr": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
    "llama3_like": """{{- bos_token }}
{%- set ns = namespace(system='', n=0) %}
{%- for m in messages if m.role != 'tool' %}
    {%- if m.role == 'system' %}{%- set ns.system = m.content | trim %}{%- endif %}
    {%- set ns.n = ns.n + 1 %}
{%- endfor %}
{%- if ns.system %}{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + ns.system + '<|eot_id|>' }}{%- endif %}
{%- for message in messages | reverse | reverse %}
    {%- if message['role'] != 'system' -%}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{#- a comment -#}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
{{- ns.n ~ '/' ~ (messages | length) ~ ' ' ~ (messages[-1].content[:4] | upper) ~ ' ' ~ ({'a': [1, 2.5, none, true], 'b': 'x'} | tojson) ~ ' ' ~ (7 // 2) ~ (7 % 3) ~ (1 if 'user' in ['user'] else 0) ~ (undefined_thing | default('dflt')) ~ (messages[::-1][0].role) ~ (0.1 + 0.2) }}""",
}
MESSAGES = [{"role": "system", "content": "You are kind."}, {"role": "user", "content": " Hi there "},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Tell me a story."}]


def raise_exception(message):
    raise ValueError(message)


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    cases = []
    for name, source in TEMPLATES.items():
        for messages, gen in ((MESSAGES, True), (MESSAGES[1:3], False)):
            context = {"messages": messages, "add_generation_prompt": gen, "bos_token": "<s>", "eos_token": "</s>"}
            cases.append({"name": name, "template": source, "context": context,
                          "expected": env.from_string(source).render(**context)})
    # raise_exception: roles that do not alternate.
    bad = {"messages": [MESSAGES[1], MESSAGES[1]], "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>"}
    cases.append({"name": "llama2_raises", "template": TEMPLATES["llama2"], "context": bad,
                  "error": "Conversation roles must alternate user/assistant/user/assistant/..."})
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat_template_vectors.json")
    with open(out, "w") as f:
        json.dump({"generator": "jinja2 " + __import__("jinja2").__version__ + " via make_chat_template_vectors.py",
                   "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
