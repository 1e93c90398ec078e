// Customer display. Renders whatever view the daemon pushes over /events; decides nothing.
// The only things it sends are touches (/select, /cancel), which the controller treats exactly
// like the board's keys.
"use strict";
(function () {
  const LANG_KEY = "vending.kiosk.lang";
  const DISCONNECTED_AFTER_MS = 2000;   // short blips keep the screen; longer ones hide the QR
  const TAP_GUARD_MS = 700;             // one touch, one request: fingers bounce

  const TEXT = {
    zh: {
      brand: "扫码购", other_lang: "English", connecting: "正在连接…",
      choose: "请选择商品", how: "选好商品后，用微信或支付宝扫码支付", sold_out: "售罄", disabled: "暂停销售", unavailable: "暂不可售",
      wechat: "微信", alipay: "支付宝", scan: "扫码支付", expires_in: "剩余时间",
      cancel: "取消", preparing: "正在生成付款码…", expired: "付款码已过期",
      paid: "已收到付款", dispensing: "正在出货，请稍候…",
      thanks: "谢谢惠顾！", take: "请从下方取货口取走商品。", follow: "扫码关注我们",
      sorry: "非常抱歉", oos: "暂停服务",
      refund_money: (m) => `您支付的 ${m} 将原路退回。`,
      refund_none: "请联系运营人员处理。",
      order_ref: (id) => `订单号 ${id}`,
      reasons: {
        jam: "商品卡住了，未能出货。", no_drop: "商品未能掉落。",
        empty: "该商品已售罄。", timeout: "出货超时。",
        uncertain: "无法确认商品是否已出货。", late: "付款到达时订单已关闭。",
        mismatch: "付款金额与订单不符。", duplicate: "该订单已经付过款。",
        board_offline: "售货机暂时无法出货。", _: "出货时出现了问题。",
      },
      oos_reasons: {
        board_offline: "机器正在检修，请稍后再试。", door_open: "正在维护，请稍后再试。",
        no_products: "暂无可售商品。", stopping: "机器正在重启，请稍候。", _: "请稍后再试。",
      },
    },
    en: {
      brand: "Scan & Go", other_lang: "中文", connecting: "Connecting…",
      choose: "Choose a product", how: "Pick a product, then scan to pay with WeChat or Alipay",
      sold_out: "Sold out", disabled: "Unavailable",
      unavailable: "Unavailable",
      wechat: "WeChat", alipay: "Alipay", scan: "Scan to pay", expires_in: "Time left",
      cancel: "Cancel", preparing: "Preparing your QR code…", expired: "This code has expired",
      paid: "Payment received", dispensing: "Dispensing your product…",
      thanks: "Thank you!", take: "Please take your product from the tray below.",
      follow: "Scan to follow us",
      sorry: "We're sorry", oos: "Temporarily out of service",
      refund_money: (m) => `Your payment of ${m} will be refunded.`,
      refund_none: "Please contact the operator for help.",
      order_ref: (id) => `Order ${id}`,
      reasons: {
        jam: "The product got stuck.", no_drop: "The product did not drop.",
        empty: "This product is sold out.", timeout: "The machine took too long to dispense.",
        uncertain: "We could not confirm that your product came out.",
        late: "Your payment arrived after the order had closed.",
        mismatch: "The amount paid did not match the order.",
        duplicate: "This order had already been paid.",
        board_offline: "The machine could not dispense right now.",
        _: "Something went wrong while dispensing.",
      },
      oos_reasons: {
        board_offline: "The machine is being checked. Please try again later.",
        door_open: "Maintenance in progress. Please try again later.",
        no_products: "Nothing is for sale right now.",
        stopping: "The machine is restarting. Please wait a moment.", _: "Please try again later.",
      },
    },
  };

  // Same rules as vending/display/view.py format_money: integer maths only, never floats.
  const EXPONENTS = { JPY: 0, KRW: 0, VND: 0, CLP: 0, ISK: 0, XAF: 0, XOF: 0,
                      BHD: 3, KWD: 3, OMR: 3, JOD: 3, TND: 3 };
  const SYMBOLS = { CNY: "¥", JPY: "¥", USD: "$", EUR: "€", GBP: "£", HKD: "HK$", TWD: "NT$",
                    KRW: "₩", SGD: "S$", MOP: "MOP$" };
  function formatMoney(amount, currency) {
    const exp = currency in EXPONENTS ? EXPONENTS[currency] : 2;
    const sign = amount < 0 ? "-" : "";
    const abs = Math.abs(amount), unit = 10 ** exp;
    const major = Math.floor(abs / unit), minor = abs % unit;
    const num = exp ? `${major}.${String(minor).padStart(exp, "0")}` : String(major);
    return currency in SYMBOLS ? `${sign}${SYMBOLS[currency]}${num}` : `${sign}${num} ${currency}`;
  }

  const $ = (id) => document.getElementById(id);
  const state = {
    lang: "zh", view: null, lastSeq: -1, clockOffset: 0, productsKey: null,
    qrKey: null, followKey: null, connected: false, lostTimer: null, tapAt: 0, tick: null,
  };

  function t(key) { return TEXT[state.lang][key]; }
  function name(p) { return state.lang === "zh" ? (p.name_zh || p.name_en) : (p.name_en || p.name_zh); }
  function altName(p) { const n = state.lang === "zh" ? p.name_en : p.name_zh; return n === name(p) ? "" : n; }
  function daemonNow() { return Date.now() / 1000 + state.clockOffset; }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // ---- language ------------------------------------------------------------------------
  function initLang() {
    let saved = null;
    try { saved = localStorage.getItem(LANG_KEY); } catch (e) { /* storage off: use default */ }
    const dflt = document.documentElement.dataset.defaultLang;
    state.lang = saved in TEXT ? saved : (dflt in TEXT ? dflt : "zh");
  }
  function setLang(lang) {
    state.lang = lang;
    try { localStorage.setItem(LANG_KEY, lang); } catch (e) { /* kiosk without storage */ }
    applyStaticText();
    state.productsKey = null;
    if (state.view) render(state.view);
  }
  function applyStaticText() {
    document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
    document.body.dataset.lang = state.lang;
    for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
    $("lang-toggle").textContent = t("other_lang");
  }

  // ---- screens -------------------------------------------------------------------------
  function render(view) {
    state.view = view;
    const screen = state.connected ? view.screen : "connecting";
    const shown = screen === "ordering" || screen === "qr" ? "pay" : screen;
    document.body.dataset.screen = shown;
    document.body.dataset.view = view.screen;
    document.body.dataset.seq = String(view.seq);
    if (screen === "grid") renderGrid(view);
    if (shown === "pay") renderPay(view);
    if (screen === "dispensing") $("dispensing-name").textContent = view.product ? name(view.product) : "";
    if (screen === "thanks") renderThanks(view);
    if (screen === "refund") renderRefund(view);
    if (screen === "out_of_service") {
      const r = TEXT[state.lang].oos_reasons;
      $("oos-reason").textContent = r[view.reason] || r._;
    }
    if (shown !== "pay") setQr(null);
    if (screen !== "thanks") setFollow(null);
    tick();
  }

  function renderGrid(view) {
    const key = state.lang + JSON.stringify(view.products);
    if (key === state.productsKey) return;      // same planogram: keep the DOM (and any press)
    state.productsKey = key;
    const box = $("products");
    box.replaceChildren();
    for (const p of view.products) {
      const b = el("button", "product");
      b.type = "button";
      b.dataset.slot = String(p.slot);
      b.setAttribute("role", "listitem");
      if (!p.available) {
        b.disabled = true;
        b.classList.add("unavailable");
        b.dataset.reason = p.reason || "unavailable";
      }
      b.append(el("span", "slot", String(p.slot)), el("span", "name", name(p)),
               el("span", "name-alt", altName(p)));
      const price = el("span", "price");
      if (p.promo_price !== null && p.promo_price !== undefined && p.promo_price !== p.price) {
        price.append(el("s", "regular", formatMoney(p.price, p.currency)), " ",
                     el("span", "now promo", formatMoney(p.promo_price, p.currency)));
      } else {
        price.append(el("span", "now", formatMoney(p.price, p.currency)));
      }
      b.append(price);
      if (!p.available) b.append(el("span", "badge", t(p.reason in TEXT.zh ? p.reason : "unavailable")));
      box.append(b);
    }
  }

  function renderPay(view) {
    const p = view.product;
    $("pay-name").textContent = p ? name(p) : "";
    $("pay-name-alt").textContent = p ? altName(p) : "";
    $("pay-amount").textContent =
      view.amount !== null && view.currency ? formatMoney(view.amount, view.currency) : "";
    document.body.dataset.offline = String(!!view.offline);   // styled like any other QR
    $("countdown-row").style.visibility = view.screen === "qr" && !view.expires_at ? "hidden" : "";
    setQr(view.screen === "qr" ? view : null);
  }

  function renderThanks(view) {
    setFollow(view.follow_qr_url ? view : null);
  }

  function renderRefund(view) {
    const tx = TEXT[state.lang];
    const reason = $("refund-reason");
    reason.dataset.reason = view.refund_reason || "";
    reason.textContent = tx.reasons[view.refund_reason] || tx.reasons._;
    const paid = view.amount !== null && view.currency ? formatMoney(view.amount, view.currency) : "";
    $("refund-money").textContent = view.refunded ? (paid ? tx.refund_money(paid) : "") : tx.refund_none;
    $("refund-ref").textContent = view.order_id ? tx.order_ref(view.order_id) : "";
  }

  // ---- QR images: fetched by seq, so the server only ever hands out the current view's QR ----
  function setQr(view) {
    const img = $("qr");
    const key = view ? view.qr_url : null;
    if (key === state.qrKey) return;            // same code as on screen: no reload, no flicker
    state.qrKey = key;
    img.classList.remove("loaded");
    img.removeAttribute("src");
    if (!key) return;
    img.onload = () => { if (state.qrKey === key) { img.classList.add("loaded"); fitQr(); } };
    img.onerror = () => { if (state.qrKey === key) state.qrKey = null; };  // retry on next view
    img.src = `/qr.png?seq=${view.seq}`;
  }

  function setFollow(view) {
    const img = $("follow-qr"), fig = $("follow");
    const key = view ? view.follow_qr_url : null;
    fig.hidden = !key;
    if (key === state.followKey) return;
    state.followKey = key;
    img.classList.remove("loaded");
    img.removeAttribute("src");
    if (!key) return;
    img.onload = () => { if (state.followKey === key) img.classList.add("loaded"); };
    img.onerror = () => { if (state.followKey === key) state.followKey = null; };
    img.src = `/follow.png?seq=${view.seq}`;
  }

  // Scale the 1-pixel-per-module PNG by a whole number so every module is the same size:
  // uneven modules are what make cheap phone cameras hesitate.
  function fitQr() {
    const img = $("qr"), box = $("qr-card");
    const n = img.naturalWidth;
    if (!n) return;
    const dpr = window.devicePixelRatio || 1;
    const avail = Math.min(box.clientWidth, box.clientHeight) * dpr;
    const px = Math.max(1, Math.floor(avail / n)) * n / dpr;
    img.style.width = img.style.height = `${px}px`;
  }

  // ---- countdown -----------------------------------------------------------------------
  function tick() {
    const v = state.view;
    if (!v || v.screen !== "qr" || !v.expires_at) {
      document.body.dataset.expired = document.body.dataset.hurry = "false";
      $("countdown").textContent = "";
      return;
    }
    const left = Math.max(0, Math.ceil(v.expires_at - daemonNow()));
    const mm = Math.floor(left / 60), ss = String(left % 60).padStart(2, "0");
    $("countdown").textContent = `${mm}:${ss}`;
    document.body.dataset.expired = String(left === 0);
    document.body.dataset.hurry = String(left > 0 && left <= 20);
  }

  // ---- input ---------------------------------------------------------------------------
  function post(path, body) {
    return fetch(path, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body), cache: "no-store",
    }).catch(() => { /* the daemon is restarting; the next view tells the truth */ });
  }
  function guarded() {
    const now = Date.now();
    if (now - state.tapAt < TAP_GUARD_MS) return false;
    state.tapAt = now;
    return true;
  }
  function onProductClick(ev) {
    const b = ev.target.closest("button.product");
    if (!b || b.disabled || !guarded()) return;
    b.classList.add("pressed");
    setTimeout(() => b.classList.remove("pressed"), 600);
    post("/select", { slot: Number(b.dataset.slot) });
  }

  // ---- connection ----------------------------------------------------------------------
  function setConnected(ok) {
    if (ok) {
      clearTimeout(state.lostTimer);
      state.lostTimer = null;
      state.connected = true;
      return;
    }
    if (state.lostTimer !== null) return;     // each failed retry must not restart the clock
    state.lostTimer = setTimeout(() => {
      state.lostTimer = null;
      state.connected = false;
      if (state.view) render(state.view); else document.body.dataset.screen = "connecting";
    }, DISCONNECTED_AFTER_MS);
  }

  function connect() {
    const es = new EventSource("/events");
    // A new connection may be a restarted daemon whose seq starts again from 0; its first
    // message is the current view either way.
    es.onopen = () => { state.lastSeq = -1; };
    es.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      const view = msg.view;
      if (!view || view.seq < state.lastSeq) return;
      state.lastSeq = view.seq;
      state.clockOffset = msg.now - Date.now() / 1000;
      setConnected(true);
      render(view);
    };
    es.onerror = () => {
      setConnected(false);
      if (es.readyState === EventSource.CLOSED) {     // the browser gave up: start over
        es.close();
        setTimeout(connect, 1000);
      }
    };
  }

  function start() {
    initLang();
    applyStaticText();
    $("lang-toggle").addEventListener("click", () => setLang(state.lang === "zh" ? "en" : "zh"));
    $("products").addEventListener("click", onProductClick);
    $("cancel").addEventListener("click", () => { if (guarded()) post("/cancel", {}); });
    document.addEventListener("contextmenu", (e) => e.preventDefault());
    window.addEventListener("resize", fitQr);
    state.tick = setInterval(tick, 250);
    connect();
  }

  window.vendingKiosk = { formatMoney };    // for tests and technicians' consoles
  start();
})();
