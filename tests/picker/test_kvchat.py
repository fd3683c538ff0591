"""precise-prefix renders a chat as the model server does (picker/scheduling/kvchat.py).

The templates are written here in the two formats they document (Llama-2's
``<s>[INST] <<SYS>>…<</SYS>> … [/INST] … </s>`` and ChatML's ``<|im_start|>role\\n…<|im_end|>``),
and the expected strings are written out by hand from those formats, not produced by
our code. The ChatML template puts its tags on indented lines of their own: it renders
to the documented format only with ``trim_blocks`` and ``lstrip_blocks`` on, as
transformers and vLLM render it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest
from tokenizers import Tokenizer

from picker.scheduling.precise import PrecisePrefixScorer, precise_prompt_metrics
from shared.kvhash import BlockHasher
from tests.picker.test_kvtokcache import _train

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

CHATML = """{% for message in messages %}
    {% if message['role'] == 'system' %}
<|im_start|>system
{{ message['content'] }}<|im_end|>
    {% else %}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""

# ChatML whose assistant turns are wrapped in transformers' {% generation %} tag (templates
# written for return_assistant_tokens_mask): rendered, the tag leaves its body unchanged.
CHATML_GENERATION = """{% for message in messages %}
<|im_start|>{{ message['role'] }}
    {% if message['role'] == 'assistant' %}
        {% generation %}
{{ message['content'] }}<|im_end|>
        {% endgeneration %}
    {% else %}
{{ message['content'] }}<|im_end|>
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": [{"type": "text", "text": "Bye"}, {"type": "text", "text": "now"}]},
]
FLAT = "system: Be brief.\nuser: Hi\nassistant: Hello!\nuser: Byenow\n"  # picker.body's flattening

LLAMA2_TEXT = "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Bye\nnow [/INST]"
CHATML_TEXT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye\nnow<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def trained() -> str:
    return _train("metaspace")  # a SentencePiece-style BPE whose post-processor prepends <s>


def _model_dir(tokenizer_json: str, config: dict | None, jinja: str | None) -> str:
    d = tempfile.mkdtemp()
    shutil.copy(tokenizer_json, os.path.join(d, "tokenizer.json"))
    if config is not None:
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(config, f)
    if jinja is not None:
        with open(os.path.join(d, "chat_template.jinja"), "w") as f:
            f.write(jinja)
    return os.path.join(d, "tokenizer.json")


def _expected(path: str, text: str) -> list[int]:
    ids = Tokenizer.from_file(path).encode(text, add_special_tokens=False).ids
    return BlockHasher(4).hashes(ids)


def test_llama2_template_from_tokenizer_config(trained):
    pytest.importorskip("jinja2")
    bos = {"content": "<s>", "lstrip": False, "normalized": False, "special": True}
    path = _model_dir(trained, {"chat_template": LLAMA2, "bos_token": bos, "eos_token": "</s>"}, None)
    s = PrecisePrefixScorer(tokenizer=path, block_size=4)
    assert s.render(FLAT, CHAT) == (LLAMA2_TEXT, True)
    ids = s.chat_tokenizer.encode(LLAMA2_TEXT)
    bos_id = Tokenizer.from_file(path).token_to_id("<s>")
    assert ids[0] == bos_id and ids[1] != bos_id  # the template's BOS, not a second one
    assert s.hashes(FLAT, CHAT) == _expected(path, LLAMA2_TEXT)
    # roles out of order: the template raises, the chat is scored flattened and counted
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert s.render("user: a\nuser: b\n", bad) == ("user: a\nuser: b\n", False) and s.chat_failed == 1
    # a completion prompt keeps its special tokens (vLLM adds them to a completion)
    assert s.hashes("plain prompt text") == BlockHasher(4).hashes(
        Tokenizer.from_file(path).encode("plain prompt text").ids
    )


def test_chatml_template_file_beside_the_tokenizer_wins(trained):
    pytest.importorskip("jinja2")
    path = _model_dir(trained, {"chat_template": LLAMA2, "bos_token": "<s>"}, CHATML)
    s = PrecisePrefixScorer(tokenizer=path, block_size=4)
    assert s.render(FLAT, CHAT) == (CHATML_TEXT, True)
    assert s.hashes(FLAT, CHAT) == _expected(path, CHATML_TEXT)


def test_a_generation_tag_renders_its_body_unchanged(trained):
    pytest.importorskip("jinja2")
    path = _model_dir(trained, {"bos_token": "<s>"}, CHATML_GENERATION)
    s = PrecisePrefixScorer(tokenizer=path, block_size=4)
    assert s.render(FLAT, CHAT) == (CHATML_TEXT, True)
    assert s.hashes(FLAT, CHAT) == _expected(path, CHATML_TEXT)


def test_without_a_template_the_chat_is_hashed_flattened(trained):
    path = _model_dir(trained, {"bos_token": "<s>"}, None)
    s = PrecisePrefixScorer(tokenizer=path, block_size=4)
    assert s.chat is None and s.render(FLAT, CHAT) == (FLAT, False)
    assert s.hashes(FLAT, CHAT) == BlockHasher(4).hashes(Tokenizer.from_file(path).encode(FLAT).ids)
    assert _chat_counts(s) == {"template": 0, "refused": 0, "flattened": 2}


def test_the_simulator_chat_is_rendered_as_the_simulator_renders_it():
    from sim.openai import chat_prompt
    from sim.tokenize import encode

    s = PrecisePrefixScorer(tokenizer="sim", block_size=4)
    text = chat_prompt({"messages": CHAT})
    assert s.render(FLAT, CHAT) == (text, True)
    assert s.hashes(FLAT, CHAT) == BlockHasher(4).hashes(encode(text)) != s.hashes(FLAT)
    assert _chat_counts(s) == {"template": 2, "refused": 0, "flattened": 0}  # a completion is no chat


def _chat_counts(s: PrecisePrefixScorer) -> dict[str, float]:
    fams = {f.name: f for f in precise_prompt_metrics([s])}
    return {x.labels["render"]: x.value for x in fams["infergate_picker_precise_chat"].samples}
