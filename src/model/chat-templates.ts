import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TemplateTokens } from './chat-template.js';

/**
 * Chat templates of three well-known formats, for random checkpoints and tests: written here from
 * what each format is. With a checkpoint's own vocabulary their markers are special tokens; with
 * GPT-2's (the random checkpoints') they are plain text, which serves a test as well.
 */

/** A format's template and the special tokens it names, as tokenizer_config.json holds them. */
export interface KnownTemplate {
  template: string;
  tokens: TemplateTokens;
}

/**
 * ChatML, as Qwen2 writes a conversation: `<|im_start|>role\ncontent<|im_end|>\n` per message, the
 * generation prompt `<|im_start|>assistant\n`. No BOS; no default system message.
 */
const CHATML =
  '{% for message in messages %}' +
  "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
  '{% endfor %}' +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/**
 * Llama 3's header format: the BOS once, then per message
 * `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>` (content trimmed); the
 * generation prompt is an assistant header.
 */
const LLAMA3 =
  '{{ bos_token }}' +
  '{% for message in messages %}' +
  "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] | trim) + '<|eot_id|>' }}" +
  '{% endfor %}' +
  "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/**
 * Llama 2's `[INST]` format: each user turn `<s>[INST] content [/INST]`, each assistant answer
 * ` content </s>` after it (contents trimmed); a system message goes into the first user turn as
 * `<<SYS>>\nsystem\n<</SYS>>\n\n`. Roles after the system message must alternate user, assistant;
 * the format has no generation prompt (the model answers after `[/INST]`).
 */
const LLAMA2 =
  "{% if messages[0]['role'] == 'system' %}" +
  "{% set system = '<<SYS>>\\n' + (messages[0]['content'] | trim) + '\\n<</SYS>>\\n\\n' %}" +
  '{% set turns = messages[1:] %}' +
  "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}" +
  '{% for message in turns %}' +
  "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
  "{{ raise_exception('after an optional system message, the roles must alternate user, assistant, user, ...') }}" +
  '{% endif %}' +
  "{% if message['role'] == 'user' %}" +
  "{{ bos_token + '[INST] ' + (system if loop.first else '') + (message['content'] | trim) + ' [/INST]' }}" +
  "{% else %}{{ ' ' + (message['content'] | trim) + ' ' + eos_token }}{% endif %}" +
  '{% endfor %}';

/** The known formats by name, with the special tokens their checkpoints name. */
export const KNOWN_TEMPLATES = {
  chatml: { template: CHATML, tokens: { eos_token: '<|im_end|>' } },
  llama3: { template: LLAMA3, tokens: { bos_token: '<|begin_of_text|>', eos_token: '<|eot_id|>' } },
  llama2: { template: LLAMA2, tokens: { bos_token: '<s>', eos_token: '</s>' } },
} satisfies Record<string, KnownTemplate>;

export type KnownTemplateName = keyof typeof KNOWN_TEMPLATES;

/**
 * Writes a known format's template into a checkpoint directory's tokenizer_config.json, merged
 * with what the file holds: `chat_template` replaced, the format's special tokens added where the
 * file names none (`tokens` replaces them).
 */
export function writeChatTemplate(dir: string, name: KnownTemplateName, tokens: TemplateTokens = {}): void {
  const file = join(dir, 'tokenizer_config.json');
  const old = existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>) : {};
  const known = KNOWN_TEMPLATES[name];
  const config = { ...known.tokens, ...old, ...tokens, chat_template: known.template };
  writeFileSync(file, `${JSON.stringify(config, null, 2)}\n`);
}
