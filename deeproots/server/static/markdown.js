// A small markdown renderer that builds DOM nodes with createElement and textContent only: no string of the
// model's (or the user's, or an import's) ever becomes HTML, so there is nothing to sanitize. Covers what chat
// answers use: paragraphs, headings, lists, quotes, rules, tables, fenced code (highlighted, copy button),
// inline code, bold, italic, strike-through, links (http, https and mailto only).

const FENCE = /^\s*(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^\s*>\s?/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_RULE = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;
const INLINE = new RegExp([
  /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/.source,                          // 1, 2: code
  /\*\*(?=\S)([\s\S]*?\S)\*\*/.source,                                  // 3: bold
  /__(?=\S)([\s\S]*?\S)__/.source,                                      // 4: bold
  /\*(?=[^\s*])([^*]*?[^\s*]|[^\s*])\*/.source,                         // 5: italic
  /\b_(?=[^\s_])([^_]*?[^\s_]|[^\s_])_\b/.source,                       // 6: italic
  /~~(?=\S)([\s\S]*?\S)~~/.source,                                      // 7: strike
  /\[([^\]\n]+)\]\(\s*([^)\s]+)\s*\)/.source,                           // 8, 9: link
  /(https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])/.source,                    // 10: bare link
].join('|'), 'g');
const SAFE_URL = /^(https?:|mailto:)/i;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function link(label, url) {
  if (!SAFE_URL.test(url)) return document.createTextNode(label);  // javascript:, data:, ... stay text
  const anchor = el('a', null, label);
  anchor.href = url;
  anchor.target = '_blank';
  anchor.rel = 'noopener noreferrer';
  return anchor;
}

// Inline markdown of one block's text -> nodes appended to `parent`.
export function renderInline(text, parent) {
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) parent.append(text.slice(last, match.index));
    const [, , code, bold, bold2, italic, italic2, strike, label, url, bare] = match;
    if (code !== undefined) parent.append(el('code', null, code.trim() || code));
    else if (bold !== undefined || bold2 !== undefined) renderInline(bold ?? bold2, parent.appendChild(el('strong')));
    else if (italic !== undefined || italic2 !== undefined) {
      renderInline(italic ?? italic2, parent.appendChild(el('em')));
    }
    else if (strike !== undefined) renderInline(strike, parent.appendChild(el('del')));
    else if (label !== undefined) parent.append(link(label, url));
    else parent.append(link(bare, bare));
    last = match.index + match[0].length;
  }
  if (last < text.length) parent.append(text.slice(last));
  return parent;
}

// Keywords of the languages chat answers show most; enough to make code readable, not a parser.
const KEYWORDS = new Set(('if else elif for while do return function def class import from export const let var ' +
  'new try catch except finally raise throw with as async await yield lambda pass break continue switch case ' +
  'default struct enum fn pub use mod impl trait match where type interface public private static void int ' +
  'float double char bool long unsigned auto in of is not and or del global nonlocal assert package func go ' +
  'true false null nil None True False self this').split(' '));
const TOKEN = new RegExp([
  /(\/\/[^\n]*|#[^\n]*|\/\*[\s\S]*?\*\/)/.source,                                   // 1: comment
  /("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`(?:[^`\\]|\\.)*`)/.source,            // 2: string
  /(\b\d[\d_]*(?:\.\d+)?(?:e[+-]?\d+)?\b)/.source,                                  // 3: number
  /([A-Za-z_]\w*)/.source,                                                         // 4: word
].join('|'), 'g');
const HASH_COMMENTS = new Set(['py', 'python', 'sh', 'bash', 'shell', 'zsh', 'rb', 'ruby', 'yaml', 'yml', 'toml',
  'r', 'perl', 'make', 'makefile', 'dockerfile', 'conf', 'ini', '']);

export function highlight(code, language, parent) {
  const hashComments = HASH_COMMENTS.has(language.toLowerCase());
  let last = 0;
  for (const match of code.matchAll(TOKEN)) {
    const [token, comment, string, number, word] = match;
    const kind = comment !== undefined ? (token.startsWith('#') && !hashComments ? null : 'comment')
      : string !== undefined ? 'string' : number !== undefined ? 'number'
      : KEYWORDS.has(word) ? 'keyword' : null;
    if (kind === null) continue;  // plain text: joins the next text run
    if (match.index > last) parent.append(code.slice(last, match.index));
    parent.append(el('span', 'tok-' + kind, token));
    last = match.index + token.length;
  }
  if (last < code.length) parent.append(code.slice(last));
}

function codeBlock(code, language) {
  const block = el('div', 'code-block');
  const bar = block.appendChild(el('div', 'code-bar'));
  bar.append(el('span', 'code-lang', language || 'text'));
  const copy = bar.appendChild(el('button', 'copy-code', 'Copy'));
  copy.type = 'button';
  copy.addEventListener('click', async () => {
    await navigator.clipboard.writeText(code);
    copy.textContent = 'Copied';
    setTimeout(() => { copy.textContent = 'Copy'; }, 1500);
  });
  const pre = block.appendChild(el('pre'));
  highlight(code, language, pre.appendChild(el('code')));
  return block;
}

function cells(line) {
  return line.trim().replace(/^\|/, '').replace(/\|$/, '').split('|').map((cell) => cell.trim());
}

function table(lines) {
  const node = el('table');
  const head = node.appendChild(el('thead')).appendChild(el('tr'));
  for (const cell of cells(lines[0])) renderInline(cell, head.appendChild(el('th')));
  const body = node.appendChild(el('tbody'));
  for (const line of lines.slice(2)) {
    const row = body.appendChild(el('tr'));
    for (const cell of cells(line)) renderInline(cell, row.appendChild(el('td')));
  }
  const wrap = el('div', 'table-wrap');
  wrap.append(node);
  return wrap;
}

function list(items, ordered) {
  const node = el(ordered ? 'ol' : 'ul');
  for (const item of items) renderInline(item, node.appendChild(el('li')));
  return node;
}

function startsBlock(line, next) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line)
    || (line.includes('|') && next !== undefined && TABLE_RULE.test(next) && next.includes('-'));
}

// Markdown text -> a DocumentFragment. An unclosed fence (a streaming answer) runs to the end.
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, '\n').split('\n');
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let match;
    if (!line.trim()) { i += 1; continue; }
    if ((match = FENCE.exec(line))) {
      const fence = match[1];
      const body = [];
      for (i += 1; i < lines.length && !lines[i].trim().startsWith(fence); i += 1) body.push(lines[i]);
      i += 1;
      out.append(codeBlock(body.join('\n'), match[2]));
    } else if ((match = HEADING.exec(line))) {
      out.append(renderInline(match[2], el('h' + Math.min(match[1].length + 2, 6))));  // h3..h6 inside a reply
      i += 1;
    } else if (RULE.test(line)) {
      out.append(el('hr'));
      i += 1;
    } else if (QUOTE.test(line)) {
      const body = [];
      for (; i < lines.length && QUOTE.test(lines[i]); i += 1) body.push(lines[i].replace(QUOTE, ''));
      const quote = el('blockquote');
      quote.append(renderMarkdown(body.join('\n')));
      out.append(quote);
    } else if ((match = ITEM.exec(line))) {
      const ordered = /\d/.test(match[2]);
      const items = [];
      for (; i < lines.length; i += 1) {
        const item = ITEM.exec(lines[i]);
        if (item && /\d/.test(item[2]) === ordered) items.push(item[3]);
        else if (lines[i].trim() && /^\s+/.test(lines[i]) && items.length) {
          items[items.length - 1] += ' ' + lines[i].trim();  // an indented line continues the item
        }
        else break;
      }
      out.append(list(items, ordered));
    } else if (startsBlock(line, lines[i + 1])) {  // a table: header, rule, rows
      const rows = [line, lines[i + 1]];
      for (i += 2; i < lines.length && lines[i].includes('|') && lines[i].trim(); i += 1) rows.push(lines[i]);
      out.append(table(rows));
    } else {
      const body = [line];
      for (i += 1; i < lines.length && lines[i].trim() && !startsBlock(lines[i], lines[i + 1]); i += 1) {
        body.push(lines[i]);
      }
      const paragraph = el('p');
      body.forEach((part, index) => {
        if (index) paragraph.append(el('br'));
        renderInline(part, paragraph);
      });
      out.append(paragraph);
    }
  }
  return out;
}

// An answer's reasoning (<think>...</think>, as reasoning models write it) and the rest.
export function splitReasoning(text) {
  const match = /^\s*<think>([\s\S]*?)(<\/think>|$)/.exec(text);
  if (!match) return { reasoning: null, answer: text, thinking: false };
  return { reasoning: match[1].trim(), answer: text.slice(match[0].length), thinking: match[2] === '' };
}
