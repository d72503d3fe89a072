// A small Markdown renderer that builds DOM nodes, never HTML strings: every piece of the
// model's text reaches the page through createTextNode or textContent, so markup in an answer
// (script or img tags, event handlers) is shown as text. It knows what chat answers use:
// fenced code blocks (also unterminated, while streaming), headings, lists, quotes, rules,
// paragraphs, and inline code, bold, italic, strikethrough and http(s)/mailto links.
"use strict";

(function (global) {
  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+.#-]*)\s*$/;
  const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
  const BULLET = /^(\s*)[-*+]\s+(.*)$/;
  const NUMBERED = /^(\s*)(\d{1,9})[.)]\s+(.*)$/;
  const QUOTE = /^ {0,3}>\s?(.*)$/;
  const SAFE_LINK = /^(https?:\/\/|mailto:)/i;

  function el(tag, parent, className) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (parent) parent.appendChild(node);
    return node;
  }

  // Inline spans, earliest match first; their content is parsed again (bold inside a link).
  const INLINE = [
    { re: /`([^`\n]+)`/, make: (m, parent) => { el("code", parent).textContent = m[1]; } },
    { re: /\*\*(?=\S)([\s\S]*?\S)\*\*/, make: (m, parent) => inline(m[1], el("strong", parent)) },
    { re: /__(?=\S)([\s\S]*?\S)__/, make: (m, parent) => inline(m[1], el("strong", parent)) },
    { re: /~~(?=\S)([\s\S]*?\S)~~/, make: (m, parent) => inline(m[1], el("del", parent)) },
    { re: /\*(?=[^\s*])([^*]*?[^\s*])\*/, make: (m, parent) => inline(m[1], el("em", parent)) },
    {
      re: /(^|[^\w])_(?=[^\s_])([^_]*?[^\s_])_(?!\w)/,
      make: (m, parent) => {
        if (m[1]) parent.appendChild(document.createTextNode(m[1]));
        inline(m[2], el("em", parent));
      },
    },
    {
      re: /\[([^\]\n]+)\]\(([^()\s]+)\)/,
      make: (m, parent) => {
        if (!SAFE_LINK.test(m[2])) {
          parent.appendChild(document.createTextNode(m[0]));
          return;
        }
        const link = el("a", parent);
        link.href = m[2];
        link.target = "_blank";
        link.rel = "noopener noreferrer nofollow";
        inline(m[1], link);
      },
    },
  ];

  function inline(text, parent) {
    while (text) {
      let best = null;
      for (const rule of INLINE) {
        const m = rule.re.exec(text);
        if (m && (best === null || m.index < best.m.index)) best = { m, rule };
      }
      if (best === null) {
        parent.appendChild(document.createTextNode(text));
        return;
      }
      if (best.m.index > 0) {
        parent.appendChild(document.createTextNode(text.slice(0, best.m.index)));
      }
      best.rule.make(best.m, parent);
      text = text.slice(best.m.index + best.m[0].length);
    }
  }

  // Lines of a paragraph keep their line breaks (chat answers rely on them).
  function paragraph(lines, parent) {
    const p = el("p", parent);
    lines.forEach((line, i) => {
      if (i > 0) el("br", p);
      inline(line, p);
    });
  }

  function list(lines, start, parent) {
    const ordered = NUMBERED.test(lines[start]) && !BULLET.test(lines[start]);
    const node = el(ordered ? "ol" : "ul", parent);
    if (ordered) {
      const first = Number(NUMBERED.exec(lines[start])[2]);
      if (first !== 1) node.start = first;
    }
    const pattern = ordered ? NUMBERED : BULLET;
    let i = start;
    let item = null;
    while (i < lines.length) {
      const line = lines[i];
      const m = pattern.exec(line);
      if (m) {
        item = el("li", node);
        inline(ordered ? m[3] : m[2], item);
      } else if (line.trim() && /^\s{2,}/.test(line) && item) {
        el("br", item);
        inline(line.trim(), item); // a continuation line of the item
      } else {
        break;
      }
      i++;
    }
    return i;
  }

  function render(text, container) {
    container.replaceChildren();
    const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    let para = [];
    const flush = () => {
      if (para.length) paragraph(para, container);
      para = [];
    };
    while (i < lines.length) {
      const line = lines[i];
      const fence = FENCE.exec(line);
      if (fence) {
        flush();
        const pre = el("pre", container);
        const code = el("code", pre);
        if (fence[2]) {
          code.dataset.language = fence[2];
          el("span", pre, "code-language").textContent = fence[2];
          pre.insertBefore(pre.lastChild, code);
        }
        const body = [];
        i++;
        while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
        code.textContent = body.join("\n");
        i++; // the closing fence (absent while an answer is still streaming)
        continue;
      }
      if (!line.trim()) {
        flush();
        i++;
        continue;
      }
      const heading = HEADING.exec(line);
      if (heading) {
        flush();
        inline(heading[2], el("h" + Math.min(6, heading[1].length + 1), container)); // h1: the page's
        i++;
        continue;
      }
      if (RULE.test(line)) {
        flush();
        el("hr", container);
        i++;
        continue;
      }
      if (QUOTE.test(line)) {
        flush();
        const quoted = [];
        while (i < lines.length && QUOTE.test(lines[i])) quoted.push(QUOTE.exec(lines[i++])[1]);
        render(quoted.join("\n"), el("blockquote", container));
        continue;
      }
      if (BULLET.test(line) || NUMBERED.test(line)) {
        flush();
        i = list(lines, i, container);
        continue;
      }
      para.push(line);
      i++;
    }
    flush();
    return container;
  }

  global.GemmaMarkdown = { render };
})(window);
