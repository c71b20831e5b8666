// The try-it page: search the catalog, build a history, ask for recommendations, add an item.
// Every call goes to this service's own API (relative URLs, so a proxy may mount it below a
// path); what the API sends back is put in the page as text, never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "genrec.token";
  const SEARCH_LIMIT = 20;
  const $ = (id) => document.getElementById(id);
  const history = []; // {item_id, title, textual_id}, oldest first
  const titles = new Map(); // item id -> title, from searches, mints and look-ups
  let searchSeq = 0;
  let searchTimer = null;

  // ------------------------------------------------------------------ the API

  class ApiFailure extends Error {
    constructor(status, code, message, details) {
      super(message);
      this.status = status;
      this.code = code;
      this.details = details;
    }
  }

  function headers(withBody) {
    const result = { Accept: "application/json" };
    if (withBody) result["Content-Type"] = "application/json";
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) result.Authorization = "Bearer " + token;
    return result;
  }

  async function api(method, path, body) {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiFailure(0, "network_error", "the service did not answer (" + err.message + ")", null);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (_err) {
      data = null;
    }
    if (!response.ok) {
      const error = data && data.error;
      if (error) throw new ApiFailure(response.status, error.code, error.message, error.details);
      throw new ApiFailure(response.status, "http_" + response.status, response.statusText || "request failed", null);
    }
    return data;
  }

  function itemPath(itemId) {
    return "v1/items/" + itemId.split("/").map(encodeURIComponent).join("/");
  }

  // An item's title from its flattened text, as the service reads it (genrec.item_text.item_title):
  // the leading "title: ..." or "name: ..." field, else the whole text.
  function titleOfText(text) {
    const found = /^([^;:]+): (.*?)(?:; [^;:]+: |$)/.exec(text || "");
    return found && (found[1] === "title" || found[1] === "name") && found[2] ? found[2] : text || "";
  }

  // ------------------------------------------------------------------ building blocks

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-") || key.startsWith("aria-") || key === "type" || key === "title") {
        node.setAttribute(key, value);
      } else node[key] = value;
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // An item's title over its id and, when given, its textual ID.
  function itemBlock(title, itemId, textualId) {
    const meta = el("span", { class: "item-meta", text: itemId });
    if (textualId !== undefined) meta.append(" · ", el("code", { class: "tid", text: textualId }));
    return el("div", { class: "item-main" }, el("span", { class: "item-title", text: title }), meta);
  }

  function showError(box, failure) {
    box.replaceChildren(
      el("span", { class: "code", text: (failure.status ? failure.status + " " : "") + failure.code }),
      document.createTextNode(": " + failure.message));
    if (failure.details !== null && failure.details !== undefined) {
      box.append(el("pre", { text: JSON.stringify(failure.details, null, 2) }));
    }
    box.hidden = false;
  }

  function clearError(box) {
    box.hidden = true;
    box.replaceChildren();
  }

  // ------------------------------------------------------------------ search

  async function search() {
    const query = $("search").value.trim();
    const seq = ++searchSeq;
    const list = $("results");
    if (!query) {
      list.replaceChildren();
      clearError($("search-error"));
      return;
    }
    try {
      const params = new URLSearchParams({ q: query, limit: String(SEARCH_LIMIT) });
      const data = await api("GET", "v1/items?" + params);
      if (seq !== searchSeq) return; // a later search answered or is on its way
      clearError($("search-error"));
      list.replaceChildren(...data.items.map(resultRow));
      if (!data.items.length) list.append(el("li", { class: "hint", text: "No title matches." }));
    } catch (failure) {
      if (seq !== searchSeq) return;
      list.replaceChildren();
      showError($("search-error"), failure);
    }
  }

  function resultRow(item) {
    titles.set(item.item_id, item.title);
    const row = el("li", { "data-item-id": item.item_id, title: "add to the history" },
      itemBlock(item.title, item.item_id, item.textual_id),
      item.recommendable ? null : el("span", { class: "badge", text: "not recommendable" }));
    row.addEventListener("click", () => addToHistory(item.item_id, item.title, item.textual_id));
    return row;
  }

  // ------------------------------------------------------------------ history

  function addToHistory(itemId, title, textualId) {
    const at = history.findIndex((h) => h.item_id === itemId);
    if (at >= 0) history.splice(at, 1); // clicked again: now the latest
    history.push({ item_id: itemId, title, textual_id: textualId });
    renderHistory();
  }

  function renderHistory() {
    $("history").replaceChildren(...history.map((h, index) => {
      const remove = el("button", { type: "button", class: "icon", text: "✕", "aria-label": "remove " + h.title });
      remove.addEventListener("click", () => {
        history.splice(index, 1);
        renderHistory();
      });
      return el("li", { "data-item-id": h.item_id }, itemBlock(h.title, h.item_id, h.textual_id), remove);
    }));
    $("history-empty").hidden = history.length > 0;
  }

  // ------------------------------------------------------------------ recommendations

  function filterValues() {
    return $("filter-genres").value.split(/[\s,]+/).filter(Boolean);
  }

  async function recommend(event) {
    event.preventDefault();
    const body = { history: history.map((h) => h.item_id), k: Number($("k").value) };
    const genres = filterValues();
    if (genres.length) body.filter = { genres }; // sent only when asked for
    const table = $("recs");
    const started = performance.now();
    $("recommend-button").disabled = true;
    try {
      const data = await api("POST", "v1/recommendations", body);
      clearError($("recs-error"));
      const rows = data.items.map(recRow);
      table.tBodies[0].replaceChildren(...rows);
      table.hidden = false;
      const ms = Math.round(performance.now() - started);
      const model = data.model || {};
      $("model").textContent = data.items.length + " items in " + ms + " ms · " + (model.kind || "?") +
        " · bundle " + (model.bundle || "?") + (data.strategy ? " · strategy " + data.strategy : "");
      fillTitles(data.items, rows);
    } catch (failure) {
      table.hidden = true;
      $("model").textContent = "";
      showError($("recs-error"), failure);
    } finally {
      $("recommend-button").disabled = false;
    }
  }

  function recRow(item, index) {
    const title = titles.get(item.item_id);
    const row = el("tr", { "data-item-id": item.item_id, "data-score": String(item.score), title: "add to the history" },
      el("td", { text: String(index + 1) }),
      el("td", {}, itemBlock(title === undefined ? "…" : title, item.item_id)),
      el("td", {}, el("code", { class: "tid", text: item.textual_id })),
      el("td", { class: "num", text: item.score.toFixed(4) }));
    row.addEventListener("click", () => addToHistory(item.item_id, titles.get(item.item_id) || item.item_id, item.textual_id));
    return row;
  }

  async function fillTitles(items, rows) {
    await Promise.all(items.map(async (item, index) => {
      if (titles.has(item.item_id)) return;
      try {
        const record = await api("GET", itemPath(item.item_id));
        titles.set(item.item_id, titleOfText(record.text));
      } catch (_failure) {
        return; // the row keeps its placeholder; the recommendation itself is shown
      }
      rows[index].querySelector(".item-title").textContent = titles.get(item.item_id);
    }));
  }

  // ------------------------------------------------------------------ adding an item

  async function mint(event) {
    event.preventDefault();
    const itemId = $("mint-id").value.trim();
    const title = $("mint-title-input").value.trim();
    const metadata = { title };
    const year = $("mint-year").value.trim();
    const genres = $("mint-genres").value.trim();
    if (year) metadata.year = year;
    if (genres) metadata.genres = genres;
    const result = $("mint-result");
    try {
      const data = await api("POST", "v1/items", { item_id: itemId, metadata });
      clearError($("mint-error"));
      titles.set(data.item_id, title);
      result.replaceChildren(
        el("span", { class: "ok", text: data.created ? "Minted " : "Already in the catalog: " }),
        el("code", { class: "tid", id: "minted-id", text: data.textual_id }),
        document.createTextNode(" for " + data.item_id + " · "),
        el("span", { id: "minted-recommendable", text: data.recommendable ? "recommendable now" : "not recommendable until the bundle is retrained" }));
      result.hidden = false;
      $("search").value = title; // there it is
      search();
    } catch (failure) {
      result.hidden = true;
      showError($("mint-error"), failure);
    }
  }

  // ------------------------------------------------------------------ wiring

  function start() {
    const token = $("token");
    token.value = sessionStorage.getItem(TOKEN_KEY) || "";
    token.addEventListener("input", () => {
      const value = token.value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    });
    $("search").addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(search, 200);
    });
    $("search").addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        clearTimeout(searchTimer);
        search();
      }
    });
    $("clear-history").addEventListener("click", () => {
      history.length = 0;
      renderHistory();
    });
    $("recommend").addEventListener("submit", recommend);
    $("mint").addEventListener("submit", mint);
    renderHistory();
  }

  start();
})();
