/**
 * GPT-2's reversible byte ↔ printable character table (Radford et al. 2019), which byte-level BPE
 * vocabularies are written in (GPT-2, Llama 3, Qwen2): the printable bytes stand for themselves,
 * the others (controls, space, 0x7F-0xA0, 0xAD) for U+0100 onwards in byte order, so that no token
 * contains a space or a control character (`Ġ` is a space).
 */
function byteToChar(): string[] {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const map: string[] = [];
  let n = 0;
  for (let b = 0; b < 256; b++) map.push(String.fromCharCode(printable(b) ? b : 256 + n++));
  return map;
}

/** The character each byte is written as, by byte. */
export const BYTE_TO_CHAR: readonly string[] = byteToChar();
/** The byte each of the 256 characters stands for. */
export const CHAR_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));
