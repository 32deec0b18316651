import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { BadRequestError, CheckpointError } from '../errors.js';
import { tokenizerSettings } from './json-file.js';

/** The roles a chat message may have. */
export const CHAT_ROLES = ['system', 'user', 'assistant'] as const;
export type ChatRole = (typeof CHAT_ROLES)[number];

/** One message of a conversation, its content as one text. */
export interface ChatMessage {
  role: ChatRole;
  content: string;
}

/** Options of `ChatTemplate.render`. */
export interface RenderOptions {
  /** End with the opening of an assistant turn, for the model to write (transformers' `add_generation_prompt`). Default true. */
  addGenerationPrompt?: boolean;
}

/** The special tokens a template sees by name, as the checkpoint's tokenizer_config.json gives them. */
export interface TemplateTokens {
  bos_token?: string;
  eos_token?: string;
  unk_token?: string;
  pad_token?: string;
}

const TOKEN_NAMES = ['bos_token', 'eos_token', 'unk_token', 'pad_token'] as const;

/** A word no template changes, to find where an assistant turn's content ends. */
const PROBE = 'zqxjkv';

/**
 * A checkpoint's chat template (Jinja), rendered as transformers' `apply_chat_template` renders it:
 * blocks trimmed (trim_blocks, lstrip_blocks), the variables `messages`, `add_generation_prompt`
 * and the special tokens by name (`bos_token`, `eos_token`, ...), and `raise_exception`, whose
 * message refuses the conversation. The rendered text holds the special tokens as text (the BOS
 * too, where the format has one): it is tokenized with special tokens recognised and no BOS added.
 */
export class ChatTemplate {
  /**
   * The text that closes an assistant turn besides EOS (`<|im_end|>`, `<|eot_id|>`), found by
   * rendering a short conversation: what follows the assistant's content up to white space.
   * Undefined where nothing does (or the template refuses that conversation).
   */
  readonly endOfTurn: string | undefined;

  private constructor(
    private readonly template: Template,
    /** Where the template came from, for messages. */
    readonly file: string,
    readonly tokens: TemplateTokens,
  ) {
    this.endOfTurn = this.findEndOfTurn();
  }

  /** Parses a template's source; one that does not parse is a CheckpointError naming `file`. */
  static parse(source: string, file: string, tokens: TemplateTokens = {}): ChatTemplate {
    let template: Template;
    try {
      template = new Template(source);
    } catch (e) {
      throw new CheckpointError(file, `the chat template does not parse: ${(e as Error).message}`, 'chat_template');
    }
    return new ChatTemplate(template, file, tokens);
  }

  /**
   * The conversation as the model reads it. A conversation the template refuses (its
   * `raise_exception`, or any error while rendering it) is a 400 naming `messages`.
   */
  render(messages: readonly ChatMessage[], opts: RenderOptions = {}): string {
    try {
      return this.template.render({
        ...this.tokens,
        messages: messages.map((m) => ({ role: m.role, content: m.content })),
        add_generation_prompt: opts.addGenerationPrompt ?? true,
      });
    } catch (e) {
      throw new BadRequestError(
        `messages: the model's chat template refused the conversation: ${(e as Error).message}`,
        {
          field: 'messages',
        },
      );
    }
  }

  private findEndOfTurn(): string | undefined {
    let text: string;
    try {
      text = this.render(
        [
          { role: 'user', content: 'hi' },
          { role: 'assistant', content: PROBE },
        ],
        { addGenerationPrompt: false },
      );
    } catch {
      return undefined;
    }
    const at = text.lastIndexOf(PROBE);
    return at < 0 ? undefined : /^\s*(\S+)/.exec(text.slice(at + PROBE.length))?.[1];
  }
}

/** A special token as tokenizer_config.json writes it: a string, or an object with its `content`. */
function tokenText(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as { content?: unknown }).content === 'string')
    return (v as { content: string }).content;
  return undefined;
}

/** tokenizer_config.json's `chat_template`: a string, or a list of `{name, template}` whose `default` is used. */
function configTemplate(raw: unknown, file: string): string | undefined {
  if (raw == null) return undefined;
  if (typeof raw === 'string') return raw;
  if (Array.isArray(raw)) {
    const found = raw.find((x) => (x as { name?: unknown })?.name === 'default') as { template?: unknown } | undefined;
    if (found === undefined) return undefined; // named templates only: none is the conversation's
    if (typeof found.template === 'string') return found.template;
  }
  throw new CheckpointError(
    file,
    'chat_template must be a string or a list of {name, template} (the one named "default" is used)',
    'chat_template',
  );
}

/**
 * A checkpoint directory's chat template: `chat_template.jinja` (the newer Hugging Face layout),
 * else tokenizer_config.json's `chat_template`; its special tokens from tokenizer_config.json.
 * Undefined for a checkpoint without one (a base model, GPT-2). A template that does not parse is
 * a CheckpointError naming its file.
 */
export function loadChatTemplate(dir: string): ChatTemplate | undefined {
  const configFile = join(dir, 'tokenizer_config.json');
  const { settings: config } = tokenizerSettings(dir);
  const tokens: TemplateTokens = {};
  for (const name of TOKEN_NAMES) {
    const text = tokenText(config[name]);
    if (text !== undefined) tokens[name] = text;
  }
  const jinjaFile = join(dir, 'chat_template.jinja');
  if (existsSync(jinjaFile)) return ChatTemplate.parse(readFileSync(jinjaFile, 'utf8'), jinjaFile, tokens);
  const source = configTemplate(config.chat_template, configFile);
  return source === undefined ? undefined : ChatTemplate.parse(source, configFile, tokens);
}
