#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/ (docs/fuzzing.md).

Small valid inputs of each kind the parsers accept, written with the format rules of
docs/format.md, plus short samples of the shared text (never wiki.test.raw). Every seed stays a
few KiB, so libFuzzer mutates quickly and the repository stays lean. Usage:
    fuzz/make_seeds.py [SHARED_DIR]      (default: ../shared)
"""
import json
import random
import shutil
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
SEPARATOR = b"\n====\n"  # fuzz::kPartSeparator
rng = random.Random(12)


def put(target, name, data):
    (CORPUS / target).mkdir(parents=True, exist_ok=True)
    (CORPUS / target / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def floats(n, scale=0.1):
    return [rng.gauss(0.0, scale) for _ in range(n)]


def f32(values):
    return struct.pack(f"<{len(values)}f", *values)


def bf16(values):
    return b"".join(struct.pack("<I", struct.unpack("<I", struct.pack("<f", v))[0])[2:] for v in values)


# --- safetensors -------------------------------------------------------------------------------
def safetensors(tensors, metadata=None):
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


TENSORS = [("w.bf16", "BF16", [2, 3], bf16(floats(6))), ("w.f32", "F32", [3], f32(floats(3))),
           ("w.f16", "F16", [1, 1, 2], b"\x00\x3c" * 2), ("empty", "F32", [0, 4], b"")]


# --- GGUF --------------------------------------------------------------------------------------
def gguf_string(s):
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
          12: "<d"}


def gguf_value(kind, value):
    if kind == 8:
        return gguf_string(value)
    if kind == 9:
        element, items = value
        body = b"".join(gguf_value(element, v) for v in items)
        return struct.pack("<IQ", element, len(items)) + body
    return struct.pack(SCALAR[kind], value)


def gguf(metadata, tensors, alignment=32):
    """metadata: [(key, kind, value)]; tensors: [(name, ggml_type, shape outermost first, bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, kind, value in metadata:
        out += gguf_string(key) + struct.pack("<I", kind) + gguf_value(kind, value)
    offset, blobs = 0, b""
    for name, ggml_type, shape, raw in tensors:
        out += gguf_string(name) + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<Q", d) for d in reversed(shape))  # ne[0] fastest
        out += struct.pack("<IQ", ggml_type, offset)
        blobs += raw + b"\x00" * (-len(raw) % alignment)
        offset = len(blobs)
    out += b"\x00" * (-len(out) % alignment)
    return out + blobs


F32, F16, BF16, I8, I16, I32 = 0, 1, 30, 24, 25, 26


def gguf_all_value_types():
    metadata = [(f"k.t{kind}", kind, value) for kind, value in
                [(0, 255), (1, -1), (2, 65535), (3, -2), (4, 7), (5, -3), (6, 1.5), (7, True),
                 (10, 2**63), (11, -(2**40)), (12, 1e300)]]
    metadata += [("k.string", 8, "text \u00e9"), ("k.array.i16", 9, (3, [1, -1, 7])),
                 ("k.array.f32", 9, (6, [1.5, -2.0])), ("k.array.str", 9, (8, ["a", "", "\u2581"])),
                 ("k.array.bool", 9, (7, [True, False])), ("general.alignment", 4, 32)]
    tensors = [("t.f32", F32, [2, 3], f32(floats(6))), ("t.bf16", BF16, [4], bf16(floats(4))),
               ("t.i8", I8, [5], bytes(range(5))), ("t.i16", I16, [1, 2], b"\x01\x00\xff\xff"),
               ("t.i32", I32, [1, 1, 1, 2], b"\x01" * 8), ("t.f16", F16, [0], b"")]
    return gguf(metadata, tensors)


# --- a tiny subbit model file (dense layers) ----------------------------------------------------
def tiny_tokenizer():
    tokens = ["<unk>", "<s>", "</s>", "a", "b", "c", "d", "e", " ", "ab", "cd", "abcd", "<0x41>",
              "\u2581", "x", "y"]
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": 1, "content": "<s>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": None,
        "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": ["a b", "c d", "ab cd"]}})


def model_file(tied, embed_type):
    hidden, heads, kv_heads, head_dim, ffn, vocab = 16, 2, 1, 8, 32, 16
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "hidden_size": hidden, "num_hidden_layers": 1, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "head_dim": head_dim, "intermediate_size": ffn,
              "vocab_size": vocab, "max_position_embeddings": 8, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2}
    metadata = [("general.architecture", 8, "subbit"), ("general.name", 8, "tiny"),
                ("subbit.format_version", 11, 1), ("subbit.config", 8, json.dumps(config)),
                ("subbit.tokenizer", 8, tiny_tokenizer()), ("subbit.method", 8, "none"),
                ("subbit.compression", 8, "{}")]
    encode = (lambda v: f32(v)) if embed_type == F32 else bf16
    tensors = [("token_embd.weight", embed_type, [vocab, hidden], encode(floats(vocab * hidden))),
               ("output_norm.weight", F32, [hidden], f32(floats(hidden, 1.0))),
               ("blk.0.attn_norm.weight", F32, [hidden], f32(floats(hidden, 1.0))),
               ("blk.0.ffn_norm.weight", F32, [hidden], f32(floats(hidden, 1.0)))]
    q, kv = heads * head_dim, kv_heads * head_dim
    linears = [("attn_q", q, hidden), ("attn_k", kv, hidden), ("attn_v", kv, hidden),
               ("attn_output", hidden, q), ("ffn_gate", ffn, hidden), ("ffn_up", ffn, hidden),
               ("ffn_down", hidden, ffn)]
    prefixes = [(f"blk.0.{name}", n_out, n_in) for name, n_out, n_in in linears]
    if not tied:
        prefixes.append(("output", vocab, hidden))
    for prefix, n_out, n_in in prefixes:
        metadata.append((f"subbit.layer.{prefix}.format", 8, "dense"))
        tensors.append((prefix + ".weight", BF16, [n_out, n_in], bf16(floats(n_out * n_in))))
    return gguf(metadata, tensors)


def main():
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared"
    shutil.rmtree(CORPUS, ignore_errors=True)

    put("safetensors", "four_dtypes_metadata", safetensors(TENSORS, {"format": "pt"}))
    put("safetensors", "empty", safetensors([]))
    put("safetensors", "scalar", safetensors([("s", "F32", [], f32([1.0]))]))
    a = safetensors([TENSORS[0], TENSORS[3]])
    b = safetensors([TENSORS[1]], {"format": "pt"})
    index = {"metadata": {"total_size": 28},
             "weight_map": {"w.bf16": "a.safetensors", "empty": "a.safetensors", "w.f32": "b.safetensors"}}
    put("safetensors_index", "two_shards", json.dumps(index).encode() + SEPARATOR + a + SEPARATOR + b)
    put("safetensors_index", "one_shard",
        json.dumps({"weight_map": {"w.f32": "a.safetensors"}}).encode() + SEPARATOR + b)

    put("gguf", "all_value_and_tensor_types", gguf_all_value_types())
    put("model_file", "dense_bf16_untied", model_file(False, BF16))
    put("model_file", "dense_f32_tied", model_file(True, F32))
    put("gguf", "tiny_model", model_file(True, F32))

    for model in ["sb-8m", "stories260K", "sb-8m-llama3", "sb-8m-qwen2"]:
        config = shared / "models" / model / "config.json"
        if config.exists():
            put("config", model, config.read_bytes())
    put("config", "transformers5", json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": None, "head_dim": 16,
        "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5},
        "eos_token_id": [2, 3], "bos_token_id": None, "pretraining_tp": 1, "attention_bias": False,
        "mlp_bias": False, "hidden_act": "silu", "tie_word_embeddings": True}, indent=1))

    put("tokenizer_json", "tiny_bpe", tiny_tokenizer())
    put("tokenizer_json", "stories260K_sentencepiece",
        (ROOT / "fuzz" / "tokenizers" / "stories260K.json").read_bytes())
    for name, path in [("sb8m_byte_level_cut", ROOT / "models" / "sb-8m" / "tokenizer.json"),
                       ("smollm2_cut", shared / "models" / "smollm2-tokenizer" / "tokenizer.json")]:
        if path.exists():
            put("tokenizer_json", name, cut_tokenizer(path, 300))

    samples = ["", " ", "  leading and trailing  ", "Hello world", "12345 67.89", "<s> </s> <unk>",
               "<|endoftext|>", "\u2581word", "caf\u00e9 \u65e5\u672c \U0001f642", "tab\tnew\nline\r\n"]
    samples = [s.encode() for s in samples]
    samples += [b"\xff\xfe\x80 invalid \xc3", b"\xed\xa0\x80 surrogate", b"nul\x00byte"]
    for path in [shared / "text" / "train" / "calib.txt", shared / "text" / "tinystories_validation_100.txt"]:
        if path.exists():
            lines = [l for l in path.read_bytes().split(b"\n") if 40 < len(l) < 400]
            samples += lines[:6]
    golden = shared / "text" / "tokenizer_golden.json"
    if golden.exists():
        cases = json.loads(golden.read_text())["tokenizers"]["sb"]["cases"]
        samples += [c["text"].encode() for c in cases if len(c["text"].encode()) < 300][:12]
    for i, text in enumerate(samples):
        for target in ["encode_byte_level", "encode_sentencepiece"]:
            put(target, f"text{i}", text)

    # Chat templates: the supported families' own, bare and with variables, plus small hostile ones.
    conversation = {"messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Hello"},
                                 {"role": "assistant", "content": "Hi!"},
                                 {"role": "user", "content": "Count to 3."}],
                    "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>"}
    for path in sorted((ROOT / "tests" / "data" / "chat_templates").glob("*.jinja")):
        put("chat_template", path.stem, path.read_bytes())
        put("chat_template", path.stem + "_with_variables",
            path.read_bytes() + SEPARATOR + json.dumps(conversation).encode())
    put("chat_template", "loops_and_filters",
        "{% set ns = namespace(n=0) %}{% for m in messages if m.role != 'system' %}"
        "{{ loop.index }}:{{ m.content | trim | upper }}{% set ns.n = ns.n + 1 %}"
        "{% if loop.last %} ({{ ns.n }}){% endif %}{% else %}none{% endfor %}"
        "{{ messages | map(attribute='role') | join(',') }}{{ range(3) | list | tojson }}"
        "{{ 'x' * 3 }}{{ [1, 2] + [3] }}{{ {'a': 1}.items() | list }}{% raw %}{{{% endraw %}")
    put("chat_template", "deep_nesting", "{{ " + "(" * 150 + "1" + ")" * 150 + " }}")

    # Server requests: the first byte picks the endpoint (fuzz_server_request.cpp).
    requests = [
        (0, {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9,
             "top_k": 40, "seed": 1, "stop": ["\n", "The"], "stream": True}),
        (0, {"prompt": [1, 2, 3], "n": 1, "logprobs": None, "user": "u"}),
        (0, {"prompt": ["one string"], "echo": False, "max_tokens": 1}),
        (1, {"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
             "max_completion_tokens": 4, "stream": False, "seed": -5}),
        (1, {"messages": [{"role": "user", "content": "Hello"},
                          {"role": "assistant", "content": None, "tool_calls": []}],
             "stop": "x", "temperature": 0}),
        (2, {"content": "Hello world", "add_special": True}),
        (3, {"tokens": [1, 2, 3, 100]}),
    ]
    for i, (endpoint, body) in enumerate(requests):
        put("server_request", f"request{i}", bytes([endpoint]) + json.dumps(body).encode())
    print(f"seeds written to {CORPUS}")


def cut_tokenizer(path, keep):
    """A byte-level tokenizer cut down from a real one: its first `keep` ids and their merges."""
    t = json.loads(path.read_text())
    model = t["model"]
    vocab = {token: i for token, i in model["vocab"].items() if i < keep}
    merges = []
    for merge in model["merges"]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if left in vocab and right in vocab and left + right in vocab:
            merges.append(merge)
    model["vocab"], model["merges"] = vocab, merges
    t["added_tokens"] = [a for a in t.get("added_tokens") or [] if a["id"] < keep]
    return json.dumps(t, ensure_ascii=False)


if __name__ == "__main__":
    main()
