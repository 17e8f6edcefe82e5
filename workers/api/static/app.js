// Social Pulse dashboard: reads /v1 and follows /v1/stream. Every post text is untrusted: it is only
// ever set with textContent (never innerHTML), so a "<script>" in a post shows as text.
"use strict";

const state = { window: "1h", brand: null, token: localStorage.getItem("pulse-token") || "", charts: {} };
const $ = (id) => document.getElementById(id);
const COLORS = ["#2d6cdf", "#d64545", "#2f9e5b", "#e08a1e", "#8a4fd6", "#1c9fb0", "#b5478a", "#6b7380"];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);  // strings become text nodes
  return node;
}

async function api(path) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const response = await fetch(path, { headers });
  if (response.status === 401) {
    $("token-box").hidden = false;
    throw new Error("unauthorised");
  }
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

const pct = (x) => `${Math.round(x * 100)}%`;
const time = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

function mixBar(s) {
  const total = s.negative + s.neutral + s.positive || 1;
  const bar = el("span", { class: "mix", title: `negative ${s.negative}, neutral ${s.neutral}, positive ${s.positive}` });
  for (const [cls, n] of [["n", s.negative], ["u", s.neutral], ["p", s.positive]]) {
    const part = el("span", { class: cls });
    part.style.width = `${(100 * n) / total}%`;
    bar.append(part);
  }
  return bar;
}

function chart(id, config) {
  if (state.charts[id]) state.charts[id].destroy();
  state.charts[id] = new Chart($(id), config);
  return state.charts[id];
}

async function loadBrands() {
  const data = await api(`/v1/brands?window=${state.window}`);
  const box = $("brands");
  box.replaceChildren();
  if (!data.brands.length) {
    box.append(el("p", { class: "muted", text: "No brand mentions in this window yet." }));
    return;
  }
  if (!state.brand || !data.brands.some((b) => b.brand === state.brand)) state.brand = data.brands[0].brand;
  data.brands.forEach((b, i) => {
    const spark = el("canvas", { "aria-label": `${b.brand} mentions over the window` });
    const card = el(
      "div",
      { class: `card${b.brand === state.brand ? " selected" : ""}`, "data-brand": b.brand },
      el("div", { class: "name", text: b.brand }),
      el("div", { class: "big", text: b.mentions.toLocaleString() }),
      el("div", { class: "row" }, el("span", { text: `negative ${pct(b.negative_share)}` }), el("span", { text: `voice ${pct(b.share_of_voice)}` })),
      mixBar(b.sentiment),
      spark,
    );
    card.addEventListener("click", () => { state.brand = b.brand; refresh(); });
    box.append(card);
    new Chart(spark, {
      type: "line",
      data: { labels: b.sparkline.map((_, j) => j), datasets: [{ data: b.sparkline, borderColor: COLORS[i % COLORS.length], pointRadius: 0, borderWidth: 1.5, fill: false }] },
      options: { animation: false, responsive: false, plugins: { legend: { display: false }, tooltip: { enabled: false } }, scales: { x: { display: false }, y: { display: false, beginAtZero: true } } },
    });
  });
  $("selected-brand").textContent = state.brand;
  $("posts-brand").textContent = state.brand;
}

async function loadShareOfVoice() {
  const data = await api(`/v1/share-of-voice?window=${state.window}`);
  chart("sov-chart", {
    type: "line",
    data: {
      labels: data.points.map((p) => time(p.start)),
      datasets: data.brands.map((brand, i) => ({
        label: brand, data: data.points.map((p) => Math.round(p.shares[brand] * 1000) / 10),
        borderColor: COLORS[i % COLORS.length], backgroundColor: COLORS[i % COLORS.length] + "33", fill: true, pointRadius: 0,
      })),
    },
    options: { animation: false, scales: { y: { stacked: true, min: 0, max: 100, title: { display: true, text: "% of brand mentions" } } } },
  });
}

async function loadBrandDetail() {
  if (!state.brand) return;
  const data = await api(`/v1/brands/${encodeURIComponent(state.brand)}?window=${state.window}`);
  chart("sentiment-chart", {
    type: "bar",
    data: {
      labels: data.timeline.map((p) => time(p.start)),
      datasets: [
        { label: "negative", data: data.timeline.map((p) => p.sentiment.negative), backgroundColor: "#d64545" },
        { label: "neutral", data: data.timeline.map((p) => p.sentiment.neutral), backgroundColor: "#9aa3ae" },
        { label: "positive", data: data.timeline.map((p) => p.sentiment.positive), backgroundColor: "#2f9e5b" },
      ],
    },
    options: { animation: false, scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
  });
  const list = $("posts");
  list.replaceChildren();
  for (const post of data.samples) list.append(postItem(post));
}

function postItem(post) {
  const meta = [post.platform, post.author ? `@${post.author}` : null, post.created_at ? time(post.created_at) : null].filter(Boolean).join(" · ");
  return el("li", {}, el("span", { class: `badge ${post.sentiment || "neutral"}`, text: post.sentiment || "?" }), el("span", { class: "text", text: post.text }), el("span", { class: "meta", text: meta }));
}

async function loadTrends() {
  const data = await api(`/v1/trends?window=${state.window === "24h" ? "1h" : state.window}&k=15`);
  const body = $("trends").querySelector("tbody");
  body.replaceChildren();
  for (const t of data.terms) {
    body.append(el("tr", {}, el("td", { text: t.term }), el("td", { text: t.kind }), el("td", { text: String(t.count) }), el("td", { text: t.baseline.toFixed(1) }), el("td", { text: t.score.toFixed(1) }), el("td", {}, mixBar(t.sentiment))));
  }
  $("trends-empty").hidden = data.terms.length > 0;
  if (data.watermark) $("as-of").textContent = `complete up to ${time(data.watermark)}`;
}

const KIND_TEXT = { negative_sentiment: "Negative spike", positive_sentiment: "Praise wave", volume: "Volume spike" };

function alertItem(alert) {
  const what = alert.metric === "mentions"
    ? `${alert.observed} mentions vs ${alert.baseline.toFixed(1)} usual`
    : `${pct(alert.observed)} ${alert.metric.split("_")[0]} vs ${pct(alert.baseline)} usual`;
  const item = el("li", { class: alert.kind, "data-id": alert.id },
    el("span", { class: "when", text: time(alert.window.end) }),
    el("strong", { text: `${KIND_TEXT[alert.kind] || alert.kind}: ${alert.subject}` }),
    el("div", { class: "muted", text: `${what} · z ${alert.score.toFixed(1)}` }));
  item.addEventListener("click", () => showEvidence(alert));
  return item;
}

// Alerts that arrived on the stream and no listing has held yet (id -> [alert, ms received]). A
// listing requested before an alert was stored answers without it; it must not take the alert off
// the page. Kept until a listing holds them, for a minute at most.
const liveAlerts = new Map();
const LIVE_KEEP_MS = 60000;

async function loadAlerts() {
  const data = await api("/v1/alerts?since=24h&limit=50");
  const listed = new Set(data.alerts.map((a) => a.id));
  const now = Date.now();
  for (const [id, [, at]] of liveAlerts) if (listed.has(id) || now - at > LIVE_KEEP_MS) liveAlerts.delete(id);
  const unlisted = [...liveAlerts.values()].map(([a]) => a).reverse();  // newest first, as listed
  const alerts = [...unlisted, ...data.alerts].slice(0, 50);
  $("alerts").replaceChildren(...alerts.map(alertItem));
  $("alerts-empty").hidden = alerts.length > 0;
}

function showEvidence(alert) {
  const ev = alert.evidence;
  $("ev-title").textContent = `${KIND_TEXT[alert.kind] || alert.kind}: ${alert.subject}`;
  $("ev-summary").textContent = `${time(alert.window.start)}–${time(alert.window.end)}: ${alert.metric.replace("_", " ")} ${alert.metric === "mentions" ? alert.observed : pct(alert.observed)} against a baseline of ${alert.metric === "mentions" ? alert.baseline.toFixed(1) : pct(alert.baseline)} (z ${alert.score.toFixed(1)}); ${ev.mentions} mentions vs ${ev.baseline_mentions.toFixed(1)} usual, ${ev.authors} authors.`;
  const counts = $("ev-counts").querySelector("tbody");
  counts.replaceChildren(...["negative", "neutral", "positive"].map((k) => el("tr", {}, el("td", { text: k }), el("td", { text: String(ev.counts[k]) }))));
  $("ev-platforms").replaceChildren(...ev.platforms.map((p) => el("li", { text: `${p.name}: ${p.count}` })));
  $("ev-languages").replaceChildren(...ev.languages.map((p) => el("li", { text: `${p.name}: ${p.count}` })));
  $("ev-coterms").replaceChildren(...ev.co_terms.map((c) => el("li", { text: `${c.term} (${c.kind}): ${c.count}` })));
  $("ev-samples").replaceChildren(...ev.samples.map(postItem));
  $("evidence").showModal();
}

let pending = null;
function refreshSoon() {  // coalesce bursts of events into one refresh
  if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 1000);
}

async function refresh() {
  try {
    await loadBrands();
    await Promise.all([loadShareOfVoice(), loadBrandDetail(), loadTrends(), loadAlerts()]);
  } catch (error) {
    console.warn(error);
  }
}

function follow() {
  const query = state.token ? `?access_token=${encodeURIComponent(state.token)}` : "";
  const source = new EventSource(`/v1/stream${query}`);
  const live = $("live");
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };  // EventSource retries, sending Last-Event-ID
  source.addEventListener("alert", (event) => {
    const alert = JSON.parse(event.data);
    liveAlerts.set(alert.id, [alert, Date.now()]);
    const list = $("alerts");
    if (!list.querySelector(`[data-id="${CSS.escape(alert.id)}"]`)) list.prepend(alertItem(alert));
    $("alerts-empty").hidden = true;
    refreshSoon();
  });
  source.addEventListener("trend", refreshSoon);
}

$("window").addEventListener("change", (event) => { state.window = event.target.value; refresh(); });
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value;
  localStorage.setItem("pulse-token", state.token);
  $("token-box").hidden = true;
  refresh();
  follow();
});
refresh();
follow();
setInterval(refresh, 30000);  // and a slow poll, for windows that move without events
