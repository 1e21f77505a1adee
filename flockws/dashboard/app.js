/* flockws live dashboard.
 *
 * Connects to the WebSocket endpoint named in <meta name="flockws-endpoint">,
 * reconnects with capped exponential backoff and jitter, and shows Flock's
 * events: runs, streamed output, artifacts and a graph of agents and
 * artifacts.  Incoming messages are only queued by the socket handler; they are
 * applied and drawn in one batch per animation frame, and everything retained
 * is capped, so hundreds of events per second cost a few DOM updates per frame.
 * Event data is only ever inserted as text (never as HTML).
 */
(function () {
  "use strict";

  var LIMITS = {
    artifacts: 200, // artifacts kept and listed
    runs: 50, // runs kept
    agents: 100, // agents kept
    textChars: 20000, // streamed text kept per run
    outputs: 6, // runs shown in the live output panel
    graphNodes: 60, // nodes drawn
    queue: 5000, // queued raw messages before they are applied without waiting for a frame
  };
  var BACKOFF = { initialMs: 500, maxMs: 10000, openTimeoutMs: 10000, stableMs: 3000 };
  var HOT_MS = 1500; // how long an edge/artifact glows after activity
  var SVG_NS = "http://www.w3.org/2000/svg";

  // ------------------------------------------------------------ helpers

  function $(id) { return document.getElementById(id); }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svgEl(tag, attrs) {
    var node = document.createElementNS(SVG_NS, tag);
    if (attrs) for (var k in attrs) node.setAttribute(k, attrs[k]);
    return node;
  }

  function str(value) { return value === undefined || value === null ? "" : String(value); }

  function isObject(value) { return value !== null && typeof value === "object" && !Array.isArray(value); }

  function shortId(id) {
    id = str(id);
    return id.length > 13 ? id.slice(0, 8) + "…" : id;
  }

  function fmtMs(ms) {
    if (typeof ms !== "number" || !isFinite(ms) || ms < 0) return "";
    if (ms < 1000) return Math.round(ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
    var minutes = Math.floor(ms / 60000);
    return minutes + "m " + Math.floor((ms % 60000) / 1000) + "s";
  }

  function fmtCount(n) {
    if (n < 10000) return String(n);
    if (n < 1e6) return (n / 1000).toFixed(n < 1e5 ? 1 : 0) + "k";
    return (n / 1e6).toFixed(1) + "M";
  }

  /* Set an SVG text to `text`: a slightly smaller font if that fits `width` pixels, else an ellipsis. */
  function fitText(node, text, width) {
    node.textContent = text;
    node.style.fontSize = "";
    if (!node.getComputedTextLength) return;
    var length = node.getComputedTextLength();
    if (length <= width) return;
    var size = parseFloat(getComputedStyle(node).fontSize) || 12;
    var smaller = Math.max(size * 0.82, size * width / length);
    node.style.fontSize = smaller.toFixed(1) + "px";
    if (node.getComputedTextLength() <= width) return;
    var lo = 1, hi = text.length - 1;
    while (lo < hi) {
      var mid = (lo + hi + 1) >> 1;
      node.textContent = text.slice(0, mid) + "…";
      if (node.getComputedTextLength() <= width) lo = mid; else hi = mid - 1;
    }
    node.textContent = text.slice(0, lo) + "…";
  }

  var now = function () { return performance.now(); };

  // ------------------------------------------------------------ endpoint

  function endpointUrl() {
    var meta = document.querySelector('meta[name="flockws-endpoint"]');
    var path = meta && meta.content ? meta.content.trim() : "";
    if (!path || path.indexOf("{{") === 0) path = "/plugin/ws"; // opened without the server's substitution
    if (/^wss?:\/\//i.test(path)) return path;
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    var host = location.host || "localhost:8000";
    return scheme + "//" + host + (path.charAt(0) === "/" ? path : "/" + path);
  }

  // ------------------------------------------------------------ state

  var state = {
    runs: new Map(), // run_id -> run, insertion ordered
    agents: new Map(), // agent name -> agent
    artifacts: [], // newest last
    artifactIds: new Map(), // artifact_id -> artifact, for the retained ones (Flock sends two events per artifact)
    artifactsTotal: 0,
    types: new Map(), // artifact type -> {count, lastAt}
    edges: new Map(), // key -> {from: node key, to: node key, kind, count, lastAt}
    serverGraph: null, // {nodes, edges} from graph_updated
    received: 0,
    applied: 0,
    ignored: 0,
    ignoredTypes: new Map(),
    failed: 0,
  };
  var queue = [];
  var freshArtifacts = []; // published since the last frame
  var dirty = { runs: true, agents: true, artifacts: true, outputs: true, graph: true };
  var anonymousRuns = 0;
  var frames = 0;

  function ignore(kind) {
    state.ignored += 1;
    state.ignoredTypes.set(kind, (state.ignoredTypes.get(kind) || 0) + 1);
  }

  function agentName(d) {
    return str(d.agent_id || d.agent_name || d.agent || d.name) || "unknown";
  }

  function touchAgent(name, at) {
    var agent = state.agents.get(name);
    if (!agent) {
      agent = { name: name, runs: 0, errors: 0, published: 0, lastAt: at, lastStatus: "" };
      state.agents.set(name, agent);
      if (state.agents.size > LIMITS.agents) evictOldest(state.agents, function (a) { return a.lastAt; });
    }
    agent.lastAt = at;
    dirty.agents = dirty.graph = true;
    return agent;
  }

  function evictOldest(map, age) {
    var oldestKey = null, oldest = Infinity;
    map.forEach(function (value, key) {
      var t = age(value);
      if (t < oldest) { oldest = t; oldestKey = key; }
    });
    if (oldestKey !== null) map.delete(oldestKey);
  }

  function newRun(id, agent, at) {
    return {
      id: id, agent: agent, status: "running", statusText: "", startedAt: at, endedAt: null,
      duration: null, error: "", text: "", truncated: false, streamDone: false, textAt: 0, textChanged: false,
    };
  }

  function evictRuns() {
    if (state.runs.size <= LIMITS.runs) return;
    // Drop the oldest finished run; if every run is still running, the oldest one.
    var victim = null;
    state.runs.forEach(function (run, id) {
      if (victim === null && run.status !== "running") victim = id;
    });
    if (victim === null) victim = state.runs.keys().next().value;
    state.runs.delete(victim);
  }

  /* The run an event refers to: by run_id, else the agent's newest running run. */
  function findRun(d, agent, create, at) {
    var id = str(d.run_id || d.task_id);
    var run = null;
    if (id) {
      run = state.runs.get(id) || null;
    } else {
      state.runs.forEach(function (r) { if (r.agent === agent && r.status === "running") run = r; });
    }
    if (!run && create) {
      if (!id) id = agent + "#" + (++anonymousRuns);
      run = newRun(id, agent, at);
      state.runs.set(id, run);
      touchAgent(agent, at).runs += 1;
      evictRuns();
    }
    if (run && run.agent === "unknown" && agent !== "unknown") run.agent = agent;
    dirty.runs = dirty.agents = true;
    return run;
  }

  function addEdge(from, to, kind, at) {
    var key = kind + "\u0000" + from + "\u0000" + to;
    var edge = state.edges.get(key);
    if (!edge) {
      edge = { from: from, to: to, kind: kind, count: 0, lastAt: at };
      state.edges.set(key, edge);
      if (state.edges.size > LIMITS.graphNodes * 4) evictOldest(state.edges, function (e) { return e.lastAt; });
    }
    edge.count += 1;
    edge.lastAt = at;
    dirty.graph = true;
  }

  function touchType(type, at, published) {
    var t = state.types.get(type);
    if (!t) {
      t = { count: 0, lastAt: at };
      state.types.set(type, t);
      if (state.types.size > LIMITS.graphNodes * 2) evictOldest(state.types, function (x) { return x.lastAt; });
    }
    if (published) { t.count += 1; t.lastAt = at; }
    dirty.graph = true;
    return t;
  }

  function consumes(d, agent, at) {
    var types = Array.isArray(d.consumed_types) ? d.consumed_types : [];
    types.slice(0, 20).forEach(function (type) {
      type = str(type);
      if (!type) return;
      touchType(type, at, false);
      addEdge("t:" + type, "a:" + agent, "consume", at);
    });
  }

  function normalStatus(value) {
    var s = str(value).toLowerCase();
    if (!s || s === "success" || s === "succeeded" || s === "ok" || s === "completed" || s === "complete" || s === "done") return "success";
    if (s === "error" || s === "failed" || s === "failure" || s === "errored" || s === "exception") return "error";
    return "other";
  }

  // ------------------------------------------------------------ event handlers

  var handlers = {
    agent_execution_started: onStarted,
    agent_activated: onStarted, // Flock's runtime event
    agent_execution_completed: onCompleted,
    agent_completed: onCompleted, // Flock's runtime event
    agent_error: onError, // Flock's runtime event
    streaming_output: onStreaming,
    artifact_published: onArtifact,
    message_published: onArtifact, // Flock's runtime event
    graph_updated: onGraph,
  };

  function onStarted(d, at) {
    var agent = agentName(d);
    var run = findRun(d, agent, true, at);
    if (run.status !== "running" && run.endedAt === null) run.status = "running";
    consumes(d, agent, at);
  }

  function onCompleted(d, at) {
    var agent = agentName(d);
    var run = findRun(d, agent, true, at);
    if (run.status === "error" && d.status === undefined) return; // agent_completed after agent_error
    run.status = normalStatus(d.status);
    run.statusText = str(d.status);
    if (run.endedAt === null) run.endedAt = at;
    if (typeof d.duration_ms === "number") run.duration = d.duration_ms;
    else if (run.duration === null) run.duration = at - run.startedAt;
    run.streamDone = true;
    run.textChanged = true;
    var a = touchAgent(run.agent, at);
    a.lastStatus = run.status;
    if (run.status === "error") {
      if (!run.countedError) { run.countedError = true; a.errors += 1; }
      if (!run.error) run.error = str(d.error || d.error_message);
    }
    dirty.outputs = true;
  }

  function onError(d, at) {
    var agent = agentName(d);
    var run = findRun(d, agent, true, at);
    run.status = "error";
    run.statusText = "error";
    if (run.endedAt === null) run.endedAt = at;
    if (run.duration === null) run.duration = typeof d.duration_ms === "number" ? d.duration_ms : at - run.startedAt;
    var kind = str(d.error_type), message = str(d.error_message || d.error);
    run.error = kind && message ? kind + ": " + message : kind || message || "error";
    run.streamDone = true;
    run.textChanged = true;
    var a = touchAgent(run.agent, at);
    a.lastStatus = "error";
    if (!run.countedError) { run.countedError = true; a.errors += 1; }
    dirty.outputs = true;
  }

  function onStreaming(d, at) {
    var agent = agentName(d);
    var run = findRun(d, agent, true, at);
    var content = str(d.content !== undefined ? d.content : d.chunk);
    if (content) {
      var text = run.text + content;
      if (text.length > LIMITS.textChars) {
        text = text.slice(text.length - LIMITS.textChars);
        run.truncated = true;
      }
      run.text = text;
    }
    if (d.is_complete === true || d.is_final === true) run.streamDone = true;
    run.textAt = at;
    run.textChanged = true;
    dirty.outputs = true;
  }

  function onArtifact(d, at) {
    var type = str(d.artifact_type || d.type_name) || "artifact";
    var by = str(d.produced_by || d.agent_id || d.agent_name) || "external";
    var id = str(d.artifact_id || d.id);
    // Flock announces one artifact twice (artifact_published and message_published): count it once.
    var seen = id ? state.artifactIds.get(id) : undefined;
    if (!seen) {
      var artifact = { id: id, type: type, by: by, correlation: str(d.correlation_id), at: at };
      state.artifacts.push(artifact);
      if (id) state.artifactIds.set(id, artifact);
      while (state.artifacts.length > LIMITS.artifacts) {
        var old = state.artifacts.shift();
        if (state.artifactIds.get(old.id) === old) state.artifactIds.delete(old.id);
      }
      state.artifactsTotal += 1;
      freshArtifacts.push(artifact);
      if (freshArtifacts.length > LIMITS.artifacts) freshArtifacts.splice(0, freshArtifacts.length - LIMITS.artifacts);
      touchAgent(by, at).published += 1;
      touchType(type, at, true);
      addEdge("a:" + by, "t:" + type, "produce", at);
    }
    if (Array.isArray(d.consumers)) {
      d.consumers.slice(0, 20).forEach(function (c) {
        c = str(c);
        if (c) { touchAgent(c, at); addEdge("t:" + type, "a:" + c, "consume", at); }
      });
    }
    dirty.artifacts = true;
  }

  function onGraph(d) {
    var nodes = Array.isArray(d.nodes) ? d.nodes : [];
    var edges = Array.isArray(d.edges) ? d.edges : [];
    if (!nodes.length && !edges.length) {
      state.serverGraph = null;
    } else {
      var seen = new Set();
      var list = [];
      nodes.slice(0, 500).forEach(function (n) {
        var id = isObject(n) ? str(n.id !== undefined ? n.id : n.name) : str(n);
        if (!id || seen.has(id)) return;
        seen.add(id);
        var data = isObject(n) && isObject(n.data) ? n.data : {};
        var label = isObject(n) ? str(n.label || data.label || data.name || n.name) || id : id;
        var type = isObject(n) ? str(n.type || data.type || data.kind || n.kind) : "";
        var status = isObject(n) ? str(n.status || data.status) : "";
        var count = isObject(n) ? Number(n.count !== undefined ? n.count : data.count) : NaN;
        list.push({ id: id, label: label, type: type, status: status, count: isFinite(count) ? count : null });
      });
      var links = [];
      edges.slice(0, 2000).forEach(function (e) {
        if (!isObject(e)) return;
        var from = str(e.source !== undefined ? e.source : e.from);
        var to = str(e.target !== undefined ? e.target : e.to);
        if (!from || !to) return;
        [from, to].forEach(function (id) {
          if (!seen.has(id)) { seen.add(id); list.push({ id: id, label: id, type: "", status: "", count: null }); }
        });
        var label = str(e.label || (isObject(e.data) ? e.data.label : ""));
        links.push({ from: from, to: to, label: label, kind: /consum|subscri|input/i.test(label) ? "consume" : "produce" });
      });
      state.serverGraph = { nodes: list, edges: links };
    }
    dirty.graph = true;
  }

  // ------------------------------------------------------------ applying the queue

  function apply(raw, at) {
    var msg;
    try {
      msg = JSON.parse(raw);
    } catch (e) {
      ignore("(not JSON)");
      return;
    }
    if (!isObject(msg)) { ignore("(not an object)"); return; }
    var type = typeof msg.type === "string" ? msg.type : typeof msg.event_type === "string" ? msg.event_type : "";
    if ((type === "hello" || type === "gap") && typeof msg.epoch === "string") {
      onProtocol(type, msg);
      return;
    }
    if (typeof msg.seq === "number" && msg.seq > resume.seq) resume.seq = msg.seq;
    var handler = Object.prototype.hasOwnProperty.call(handlers, type) ? handlers[type] : null;
    if (!handler) { ignore(type || "(no type)"); return; }
    // Accept {"type": ..., "data": {...}} envelopes as well as flat events.
    var d = isObject(msg.data) && type !== "graph_updated" ? Object.assign({}, msg.data, msg) : msg;
    if (type === "graph_updated" && isObject(msg.data) && !msg.nodes) d = msg.data;
    try {
      handler(d, at);
      state.applied += 1;
    } catch (e) {
      state.failed += 1;
      if (state.failed <= 5) console.warn("flockws dashboard: could not apply", type, e);
    }
  }

  /* The server's resume protocol: "hello" names the stream (epoch) and where it is (seq);
     every event carries its seq; after a reconnect with ?since=&epoch= the server replays
     what was missed, or sends "gap" for what it no longer has. */
  var resume = { epoch: null, seq: 0, missed: 0, protocol: 0 };
  var RECENT_EVENTS = 1000; // replayed on first connect (the server caps it by its history)

  function onProtocol(type, msg) {
    resume.protocol += 1;
    if (type === "hello") {
      if (msg.epoch !== resume.epoch) {
        // A new stream (first connection, or the server restarted): start from its present.
        resume.epoch = msg.epoch;
        resume.seq = typeof msg.seq === "number" ? msg.seq : 0;
      }
    } else if (msg.epoch === resume.epoch || resume.epoch === null) {
      var from = Number(msg.from), to = Number(msg.to);
      if (isFinite(from) && isFinite(to) && to >= from) {
        resume.missed += to - from + 1;
        if (to > resume.seq) resume.seq = to;
      }
    }
  }

  function drain() {
    if (!queue.length) return;
    var batch = queue;
    queue = [];
    var at = now();
    for (var i = 0; i < batch.length; i++) apply(batch[i], at);
  }

  var frameScheduled = false;
  function scheduleFrame() {
    if (frameScheduled) return;
    frameScheduled = true;
    requestAnimationFrame(frame);
  }

  function frame() {
    frameScheduled = false;
    drain();
    render();
    frames += 1;
  }

  // ------------------------------------------------------------ connection

  var conn = {
    url: endpointUrl(),
    ws: null,
    state: "connecting",
    attempt: 0,
    retryTimer: null,
    retryAt: 0,
    openTimer: null,
    paused: false,
    connects: 0,
    everConnected: false,
    lastClose: null,
    closes: [], // close codes, oldest first (the last 20)
    lastUrl: "",
    openedAt: null,
  };

  function setConn(s) {
    conn.state = s;
    $("conn").setAttribute("data-state", s);
    $("conn-label").textContent = s;
    $("toggle").textContent = s === "disconnected" && conn.paused ? "Resume" : "Pause";
    renderConnDetail();
  }

  function renderConnDetail() {
    var text = "";
    if (conn.state === "reconnecting" && conn.retryTimer !== null) {
      text = "retry in " + Math.max(0, (conn.retryAt - now()) / 1000).toFixed(1) + " s";
    } else if (conn.state === "reconnecting" || conn.state === "connecting") {
      text = conn.attempt > 0 ? "attempt " + (conn.attempt + 1) : "";
    } else if (conn.state === "disconnected") {
      text = conn.paused ? "paused" : "";
    } else if (conn.state === "connected" && resume.missed) {
      text = "missed " + fmtCount(resume.missed) + " while away";
    }
    $("conn-detail").textContent = text;
  }

  function connect() {
    conn.retryTimer = null;
    if (conn.paused) return;
    setConn(conn.everConnected || conn.attempt > 0 ? "reconnecting" : "connecting");
    drain(); // so resume.seq covers everything already received
    resume.missed = 0; // reported per connection
    var url = conn.url;
    if (resume.epoch !== null) {
      url += (url.indexOf("?") < 0 ? "?" : "&") + "since=" + resume.seq + "&epoch=" + encodeURIComponent(resume.epoch);
    } else {
      // First connection: the server replays its recent history, so a tab opened in the
      // middle of a run shows where the run stands instead of an empty page.
      url += (url.indexOf("?") < 0 ? "?" : "&") + "last=" + RECENT_EVENTS;
    }
    conn.lastUrl = url;
    var sock;
    try {
      sock = new WebSocket(url);
    } catch (e) {
      console.warn("flockws dashboard: cannot open", conn.url, e);
      retry();
      return;
    }
    sock.binaryType = "arraybuffer";
    conn.ws = sock;
    conn.openTimer = setTimeout(function () {
      if (conn.ws === sock && sock.readyState === WebSocket.CONNECTING) sock.close();
    }, BACKOFF.openTimeoutMs);

    sock.onopen = function () {
      if (conn.ws !== sock) return;
      clearTimeout(conn.openTimer);
      conn.openedAt = now();
      conn.connects += 1;
      conn.everConnected = true;
      setConn("connected");
    };
    sock.onmessage = function (ev) {
      if (conn.ws !== sock) return;
      state.received += 1;
      rate.count += 1;
      if (typeof ev.data !== "string") { ignore("(binary)"); return; }
      queue.push(ev.data);
      if (queue.length >= LIMITS.queue) drain(); // e.g. a hidden tab gets no frames: keep memory bounded
      scheduleFrame();
    };
    sock.onerror = function () { /* a close event follows */ };
    sock.onclose = function (ev) {
      if (conn.ws !== sock) return;
      clearTimeout(conn.openTimer);
      conn.ws = null;
      conn.lastClose = { code: ev.code, reason: ev.reason, wasClean: ev.wasClean };
      conn.closes.push(ev.code);
      if (conn.closes.length > 20) conn.closes.shift();
      // The backoff starts over only after a connection that lasted: a server that accepts
      // and at once closes (full, refusing) is not hammered.
      if (conn.openedAt !== null && now() - conn.openedAt > BACKOFF.stableMs) conn.attempt = 0;
      conn.openedAt = null;
      if (conn.paused) setConn("disconnected");
      else retry();
    };
  }

  /* Capped exponential backoff with "equal jitter": half fixed, half random. */
  function retry() {
    if (conn.paused || conn.retryTimer !== null) return;
    var base = Math.min(BACKOFF.maxMs, BACKOFF.initialMs * Math.pow(2, conn.attempt));
    var delay = base / 2 + Math.random() * (base / 2);
    conn.attempt += 1;
    conn.retryAt = now() + delay;
    conn.retryTimer = setTimeout(connect, delay);
    setConn("reconnecting");
  }

  function retryNow() {
    if (conn.retryTimer === null) return;
    clearTimeout(conn.retryTimer);
    connect();
  }

  function togglePause() {
    if (conn.paused) {
      conn.paused = false;
      conn.attempt = 0;
      conn.openedAt = null;
      connect();
      return;
    }
    conn.paused = true;
    if (conn.retryTimer !== null) { clearTimeout(conn.retryTimer); conn.retryTimer = null; }
    if (conn.ws) conn.ws.close(1000, "paused");
    setConn("disconnected");
  }

  // ------------------------------------------------------------ rendering: lists

  /* Reuse one element per key, in the given order; drop the rest. */
  function syncList(container, items, keyOf, create, update) {
    var existing = new Map();
    for (var child = container.firstElementChild; child; child = child.nextElementSibling) {
      existing.set(child.dataset.key, child);
    }
    var before = container.firstElementChild;
    items.forEach(function (item) {
      var key = keyOf(item);
      var node = existing.get(key);
      if (node) existing.delete(key);
      else { node = create(item); node.dataset.key = key; }
      update(node, item);
      if (node !== before) container.insertBefore(node, before);
      else before = before.nextElementSibling;
    });
    existing.forEach(function (node) { node.remove(); });
  }

  function runningCounts() {
    var counts = new Map();
    state.runs.forEach(function (run) {
      if (run.status === "running") counts.set(run.agent, (counts.get(run.agent) || 0) + 1);
    });
    return counts;
  }

  function renderAgents(running) {
    var agents = Array.from(state.agents.values()).sort(function (a, b) {
      return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
    });
    syncList($("agents"), agents, function (a) { return a.name; }, function () {
      var li = el("li", "agent");
      var main = el("div", "agent-main");
      main.append(el("div", "agent-name"), el("div", "agent-meta"));
      li.append(el("span", "dot"), main);
      return li;
    }, function (li, a) {
      var n = running.get(a.name) || 0;
      li.classList.toggle("running", n > 0);
      li.classList.toggle("error", n === 0 && a.lastStatus === "error");
      var name = li.children[1].children[0], metaBox = li.children[1].children[1];
      name.textContent = a.name;
      name.title = a.name;
      var meta = !a.runs && a.published ? a.published + " published"
        : (n ? n + " running · " : "") + a.runs + (a.runs === 1 ? " run" : " runs") + (a.errors ? " · " + a.errors + " err" : "");
      metaBox.textContent = meta;
    });
    $("agents-count").textContent = String(agents.length);
  }

  function runTime(run, t) {
    return run.status === "running" ? fmtMs(t - run.startedAt) : fmtMs(run.duration);
  }

  function renderRuns(t) {
    var runs = Array.from(state.runs.values()).reverse(); // newest first
    var runningN = 0;
    syncList($("runs"), runs, function (r) { return r.id; }, function () {
      var li = el("li", "run");
      var main = el("div", "run-main");
      main.append(el("div", "run-agent"), el("div", "run-id"));
      li.append(el("span", "icon"), main, el("span", "run-time"));
      return li;
    }, function (li, run) {
      if (run.status === "running") runningN += 1;
      li.dataset.status = run.status;
      li.title = run.statusText ? run.id + " · " + run.statusText : run.id;
      var main = li.children[1];
      main.children[0].textContent = run.agent;
      main.children[1].textContent = shortId(run.id);
      li.children[2].textContent = runTime(run, t);
      var errorBox = li.querySelector(".run-error");
      if (run.error) {
        if (!errorBox) { errorBox = el("div", "run-error"); li.append(errorBox); }
        errorBox.textContent = run.error;
        errorBox.title = run.error;
      } else if (errorBox) {
        errorBox.remove();
      }
    });
    $("runs-summary").textContent = runs.length ? runningN + " running · " + (runs.length - runningN) + " finished" : "";
    $("runs-empty").hidden = runs.length > 0;
  }

  function renderOutputs() {
    var withText = [];
    state.runs.forEach(function (run) { if (run.text) withText.push(run); });
    var shown = withText.slice(-LIMITS.outputs).reverse(); // newest runs first
    syncList($("outputs"), shown, function (r) { return r.id; }, function (run) {
      var box = el("div", "output");
      var head = el("div", "output-head");
      head.append(el("span", "agent-name"), el("span", "output-state"), el("span", "run-id"));
      box.append(head, el("pre"));
      run.textChanged = true;
      return box;
    }, function (box, run) {
      var head = box.firstElementChild;
      head.children[0].textContent = run.agent;
      head.children[1].textContent = run.streamDone ? (run.status === "error" ? "failed" : "done") : "streaming";
      head.children[2].textContent = shortId(run.id);
      box.classList.toggle("done", run.streamDone);
      if (!run.textChanged) return;
      run.textChanged = false;
      var pre = box.lastElementChild;
      var stick = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
      pre.textContent = (run.truncated ? "…" : "") + run.text;
      if (stick) pre.scrollTop = pre.scrollHeight;
    });
    $("output-count").textContent = withText.length ? String(withText.length) + (withText.length === 1 ? " run" : " runs") : "";
    $("outputs-empty").hidden = withText.length > 0;
  }

  function renderArtifacts() {
    var list = $("artifacts");
    var fresh = freshArtifacts;
    freshArtifacts = [];
    var fragment = document.createDocumentFragment();
    for (var i = fresh.length - 1; i >= 0; i--) {
      var a = fresh[i];
      var li = el("li", "artifact");
      var type = el("span", "artifact-type", a.type);
      type.title = a.type;
      type.style.background = typeColor(a.type);
      var by = el("span", "artifact-by", a.by);
      var ids = el("span", "artifact-ids", shortId(a.id) + (a.correlation ? "  ·  " + a.correlation : ""));
      ids.title = "artifact " + a.id + (a.correlation ? "\ncorrelation " + a.correlation : "");
      li.append(type, by, ids);
      fragment.append(li);
    }
    list.insertBefore(fragment, list.firstChild);
    while (list.childElementCount > LIMITS.artifacts) list.lastElementChild.remove();
    $("artifacts-count").textContent = fmtCount(state.artifactsTotal);
    $("artifacts-empty").hidden = state.artifactsTotal > 0;
  }

  /* A stable pastel colour per artifact type. */
  var colorCache = new Map();
  function typeColor(type) {
    var c = colorCache.get(type);
    if (c) return c;
    var h = 0;
    for (var i = 0; i < type.length; i++) h = (h * 31 + type.charCodeAt(i)) >>> 0;
    c = "hsl(" + (h % 360) + ", 62%, 66%)";
    if (colorCache.size < 500) colorCache.set(type, c);
    return c;
  }

  // ------------------------------------------------------------ rendering: graph

  function graphModel(t, running) {
    var nodes = [];
    var edges = [];
    var byKey = new Map();
    function add(node) { if (!byKey.has(node.key)) { byKey.set(node.key, node); nodes.push(node); } }

    if (state.serverGraph) {
      var agentsByName = state.agents;
      var derivedKey = new Map(); // server node id -> key of the matching node built from events
      state.serverGraph.nodes.forEach(function (n) {
        var kind = /agent/i.test(n.type) ? "agent"
          : /artifact|message|type|blackboard/i.test(n.type) ? "artifact"
          : n.type ? "other"
          : agentsByName.has(n.id) || agentsByName.has(n.label) ? "agent"
          : state.types.has(n.label) ? "artifact" : "other";
        var name = agentsByName.has(n.id) ? n.id : n.label;
        var typeInfo = kind === "artifact" ? state.types.get(n.label) || state.types.get(n.id) : null;
        derivedKey.set(n.id, kind === "artifact" ? "t:" + (state.types.has(n.label) ? n.label : n.id) : "a:" + name);
        var count = typeInfo ? typeInfo.count : n.count;
        var runsOf = kind !== "artifact" && agentsByName.has(name) ? agentsByName.get(name).runs : 0;
        add({
          key: "n:" + n.id, label: n.label, kind: kind,
          running: (kind === "agent" && (running.get(name) || 0) > 0) || /^(running|active|busy)$/i.test(n.status),
          error: /^(error|failed)$/i.test(n.status),
          hot: !!typeInfo && t - typeInfo.lastAt < HOT_MS,
          badge: kind === "artifact" ? (count ? "×" + fmtCount(count) : "") : runsOf ? runsOf + (runsOf === 1 ? " run" : " runs") : "",
          at: 0,
        });
      });
      state.serverGraph.edges.forEach(function (e, i) {
        var from = derivedKey.get(e.from), to = derivedKey.get(e.to);
        var activity = state.edges.get("produce\u0000" + from + "\u0000" + to) || state.edges.get("consume\u0000" + from + "\u0000" + to);
        edges.push({
          key: "e:" + e.from + "\u0000" + e.to + "\u0000" + i, from: "n:" + e.from, to: "n:" + e.to,
          kind: e.kind, hot: !!activity && t - activity.lastAt < HOT_MS,
        });
      });
      return { nodes: nodes.slice(0, LIMITS.graphNodes), edges: edges, source: "from server" };
    }

    state.agents.forEach(function (a) {
      var n = running.get(a.name) || 0;
      var badge = a.runs ? a.runs + (a.runs === 1 ? " run" : " runs") : a.published ? a.published + " published" : "";
      add({ key: "a:" + a.name, label: a.name, kind: a.runs || a.name !== "external" ? "agent" : "other", running: n > 0, hot: false, badge: badge, at: a.lastAt });
    });
    state.types.forEach(function (info, type) {
      add({ key: "t:" + type, label: type, kind: "artifact", running: false, hot: t - info.lastAt < HOT_MS, badge: info.count ? "×" + fmtCount(info.count) : "", at: info.lastAt });
    });
    if (nodes.length > LIMITS.graphNodes) {
      nodes = nodes.slice().sort(function (a, b) { return b.at - a.at; }).slice(0, LIMITS.graphNodes);
    }
    state.edges.forEach(function (e, key) {
      edges.push({ key: key, from: e.from, to: e.to, kind: e.kind, hot: t - e.lastAt < HOT_MS });
    });
    return { nodes: nodes, edges: edges, source: "from events" };
  }

  /* Deterministic layered layout: columns by longest path (cycles broken by DFS
     back edges), order within a column by predecessors' positions, then name. */
  function layout(model, width, height) {
    var nodes = model.nodes;
    var index = new Map();
    nodes.forEach(function (n) { index.set(n.key, n); });
    var edges = model.edges.filter(function (e) { return index.has(e.from) && index.has(e.to) && e.from !== e.to; });
    var kindOrder = { agent: 1, other: 0, artifact: 2 };
    var sorted = nodes.slice().sort(function (a, b) {
      return (kindOrder[a.kind] - kindOrder[b.kind]) || (a.label < b.label ? -1 : a.label > b.label ? 1 : 0) || (a.key < b.key ? -1 : 1);
    });
    var out = new Map(), indeg = new Map();
    nodes.forEach(function (n) { out.set(n.key, []); indeg.set(n.key, 0); });
    edges.forEach(function (e) { out.get(e.from).push(e.to); indeg.set(e.to, indeg.get(e.to) + 1); });

    // DFS from sources (then anything left) to find back edges and a topological order.
    var color = new Map(), order = [], back = new Set();
    function visit(start) {
      var stack = [[start, 0]];
      color.set(start, 1);
      while (stack.length) {
        var top = stack[stack.length - 1];
        var next = out.get(top[0]);
        if (top[1] < next.length) {
          var to = next[top[1]++];
          var c = color.get(to);
          if (c === 1) back.add(top[0] + "\u0001" + to);
          else if (!c) { color.set(to, 1); stack.push([to, 0]); }
        } else {
          color.set(top[0], 2);
          order.push(top[0]);
          stack.pop();
        }
      }
    }
    sorted.forEach(function (n) { if (!indeg.get(n.key) && !color.has(n.key)) visit(n.key); });
    sorted.forEach(function (n) { if (!color.has(n.key)) visit(n.key); });
    order.reverse();

    var rank = new Map();
    nodes.forEach(function (n) { rank.set(n.key, 0); });
    order.forEach(function (k) {
      out.get(k).forEach(function (to) {
        if (!back.has(k + "\u0001" + to)) rank.set(to, Math.max(rank.get(to), rank.get(k) + 1));
      });
    });
    // Unconnected artifacts sit in the artifacts column; unconnected agents in the first.
    var connected = new Set();
    edges.forEach(function (e) { connected.add(e.from); connected.add(e.to); });
    nodes.forEach(function (n) {
      if (!connected.has(n.key) && n.kind === "artifact") rank.set(n.key, 1);
    });

    var columns = [];
    sorted.forEach(function (n) {
      var r = rank.get(n.key);
      (columns[r] = columns[r] || []).push(n);
    });
    columns = columns.filter(Boolean);

    var preds = new Map();
    edges.forEach(function (e) {
      if (!back.has(e.from + "\u0001" + e.to)) (preds.get(e.to) || preds.set(e.to, []).get(e.to)).push(e.from);
    });
    var pos = new Map();
    var colCount = columns.length || 1;
    var colGap = width / colCount;
    var nodeW = Math.max(60, Math.min(160, colGap - 18));
    var maxRows = Math.max.apply(null, columns.map(function (c) { return c.length; }).concat([1]));
    var rowGap = height / maxRows;
    var badges = rowGap >= 44;
    var nodeH = Math.max(14, Math.min(32, rowGap - (badges ? 20 : 6)));
    columns.forEach(function (col, ci) {
      if (ci > 0) {
        var centre = new Map();
        col.forEach(function (n, i) {
          var ps = (preds.get(n.key) || []).filter(function (p) { return pos.has(p); });
          centre.set(n.key, ps.length ? ps.reduce(function (s, p) { return s + pos.get(p).y; }, 0) / ps.length : Infinity);
          n._i = i;
        });
        col.sort(function (a, b) {
          var d = centre.get(a.key) - centre.get(b.key);
          return d || (a._i - b._i) || 0;
        });
      }
      var gap = height / col.length;
      col.forEach(function (n, i) {
        pos.set(n.key, { x: colGap * (ci + 0.5), y: gap * (i + 0.5) });
      });
    });
    return { pos: pos, edges: edges, back: back, nodeW: nodeW, nodeH: nodeH, badges: badges, colGap: colGap, height: height };
  }

  var graphView = { signature: "", nodes: new Map(), edges: new Map(), geometry: null, width: 0, height: 0 };

  function edgePath(a, b, geo, isBack) {
    var w = geo.nodeW / 2;
    var x1 = a.x + w, y1 = a.y, x2 = b.x - w, y2 = b.y;
    var span = Math.round((b.x - a.x) / geo.colGap);
    if (!isBack && span === 1) {
      var mx = (x1 + x2) / 2;
      return "M" + x1 + "," + y1 + " C" + mx + "," + y1 + " " + mx + "," + y2 + " " + x2 + "," + y2;
    }
    if (!isBack && span > 1) {
      // Skips columns: arc over the nodes in between instead of running behind them.
      var sx = a.x + w * 0.45, sy = a.y - geo.nodeH / 2, ex = b.x - w * 0.45, ey = b.y - geo.nodeH / 2;
      var top = Math.max(6, Math.min(sy, ey) - 16 - 12 * span);
      var lift = Math.min(sy, ey) - (4 / 3) * (Math.min(sy, ey) - top);
      return "M" + sx + "," + sy + " C" + sx + "," + lift + " " + ex + "," + lift + " " + ex + "," + ey;
    }
    // Back edge (or same column): loop around below.
    var dip = Math.max(a.y, b.y) + geo.nodeH + 18;
    return "M" + x1 + "," + y1 + " C" + (x1 + 60) + "," + dip + " " + (x2 - 60) + "," + dip + " " + x2 + "," + y2;
  }

  function renderGraph(t, running) {
    var svg = $("graph");
    var width = graphView.width || 600, height = graphView.height || 360;
    var model = graphModel(t, running);
    $("graph-source").textContent = model.source;
    $("graph-empty").hidden = model.nodes.length > 0;
    var signature = width + "x" + height + "|" + model.nodes.map(function (n) { return n.key + "/" + n.kind; }).join("\u0002") +
      "|" + model.edges.map(function (e) { return e.key; }).join("\u0002");
    var geo = graphView.geometry;
    if (signature !== graphView.signature) {
      graphView.signature = signature;
      svg.setAttribute("viewBox", "0 0 " + width + " " + height);
      geo = graphView.geometry = layout(model, width, height);
      rebuildGraph(model, geo);
    }
    // Cheap per-frame updates: running/hot classes and badges.
    model.nodes.forEach(function (n) {
      var view = graphView.nodes.get(n.key);
      if (!view) return;
      view.g.classList.toggle("running", n.running);
      view.g.classList.toggle("error", !!n.error);
      view.g.classList.toggle("hot", n.hot);
      if (view.badge.textContent !== n.badge) view.badge.textContent = n.badge;
    });
    model.edges.forEach(function (e) {
      var path = graphView.edges.get(e.key);
      if (path) path.classList.toggle("hot", e.hot);
    });
  }

  function rebuildGraph(model, geo) {
    var nodeLayer = $("graph-nodes"), edgeLayer = $("graph-edges");
    var keepNodes = new Set(), keepEdges = new Set();
    model.nodes.forEach(function (n) {
      var p = geo.pos.get(n.key);
      if (!p) return;
      keepNodes.add(n.key);
      var view = graphView.nodes.get(n.key);
      if (!view) {
        var g = svgEl("g", { "class": "node " + n.kind });
        var rect = svgEl("rect");
        var label = svgEl("text", { "class": "label" });
        var badge = svgEl("text", { "class": "badge" });
        var title = svgEl("title");
        g.append(title, rect, label, badge);
        nodeLayer.append(g);
        view = { g: g, rect: rect, label: label, badge: badge, title: title };
        graphView.nodes.set(n.key, view);
      }
      var w = geo.nodeW, h = geo.nodeH;
      var radius = n.kind === "artifact" ? h / 2 : 7;
      view.g.setAttribute("class", "node " + n.kind);
      view.g.setAttribute("transform", "translate(" + p.x.toFixed(1) + "," + p.y.toFixed(1) + ")");
      view.rect.setAttribute("x", (-w / 2).toFixed(1));
      view.rect.setAttribute("y", (-h / 2).toFixed(1));
      view.rect.setAttribute("width", w.toFixed(1));
      view.rect.setAttribute("height", h.toFixed(1));
      view.rect.setAttribute("rx", radius.toFixed(1));
      view.rect.setAttribute("ry", radius.toFixed(1));
      view.label.setAttribute("y", "0");
      fitText(view.label, n.label, w - 10);
      view.badge.setAttribute("y", (h / 2 + 10).toFixed(1));
      view.badge.setAttribute("visibility", geo.badges ? "visible" : "hidden");
      view.title.textContent = n.label;
    });
    graphView.nodes.forEach(function (view, key) {
      if (!keepNodes.has(key)) { view.g.remove(); graphView.nodes.delete(key); }
    });
    geo.edges.forEach(function (e) {
      keepEdges.add(e.key);
      var path = graphView.edges.get(e.key);
      if (!path) {
        path = svgEl("path", { "marker-end": "url(#arrow)" });
        edgeLayer.append(path);
        graphView.edges.set(e.key, path);
      }
      path.setAttribute("class", "edge " + e.kind);
      path.setAttribute("d", edgePath(geo.pos.get(e.from), geo.pos.get(e.to), geo, geo.back.has(e.from + "\u0001" + e.to)));
    });
    graphView.edges.forEach(function (path, key) {
      if (!keepEdges.has(key)) { path.remove(); graphView.edges.delete(key); }
    });
  }

  // ------------------------------------------------------------ rendering: header

  var rate = { count: 0, windowStart: 0, buckets: [], history: [], value: 0, peak: 0 };

  function tickRate(t) {
    // Events per second over a sliding two-second window, sampled every 500 ms.
    rate.buckets.push({ t: t, n: rate.count });
    rate.count = 0;
    while (rate.buckets.length && t - rate.buckets[0].t > 2000) rate.buckets.shift();
    var span = rate.buckets.length > 1 ? t - rate.buckets[0].t + 500 : 500;
    var total = rate.buckets.reduce(function (s, b) { return s + b.n; }, 0);
    rate.value = Math.round(total * 1000 / Math.max(500, span));
    rate.peak = Math.max(rate.peak, rate.value);
    rate.history.push(rate.value);
    if (rate.history.length > 120) rate.history.shift();
    $("rate").textContent = fmtCount(rate.value);
    drawSpark();
  }

  function drawSpark() {
    var canvas = $("spark");
    var ctx = canvas.getContext && canvas.getContext("2d");
    if (!ctx) return;
    var ratio = window.devicePixelRatio || 1;
    var w = 120, h = 28;
    if (canvas.width !== w * ratio) { canvas.width = w * ratio; canvas.height = h * ratio; }
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    var data = rate.history;
    if (data.length < 2) return;
    var max = Math.max.apply(null, data.concat([1]));
    var step = w / 119;
    var x0 = w - (data.length - 1) * step;
    ctx.beginPath();
    data.forEach(function (v, i) {
      var x = x0 + i * step, y = h - 2 - (v / max) * (h - 5);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.strokeStyle = "#38bdf8";
    ctx.lineWidth = 1.5;
    ctx.stroke();
    ctx.lineTo(w, h);
    ctx.lineTo(x0, h);
    ctx.closePath();
    ctx.fillStyle = "rgba(56, 189, 248, 0.15)";
    ctx.fill();
  }

  function renderCounters() {
    $("total").textContent = fmtCount(state.received);
    $("ignored").textContent = fmtCount(state.ignored);
    var parts = [];
    state.ignoredTypes.forEach(function (n, type) { if (parts.length < 12) parts.push(type + ": " + n); });
    $("ignored-box").title = "messages of a type this page does not show" + (parts.length ? "\n" + parts.join("\n") : "");
  }

  // ------------------------------------------------------------ render loop

  function render() {
    var t = now();
    var running = runningCounts();
    if (dirty.agents) renderAgents(running);
    if (dirty.runs) renderRuns(t);
    if (dirty.outputs) renderOutputs();
    if (dirty.artifacts) renderArtifacts();
    if (dirty.graph) renderGraph(t, running);
    dirty.agents = dirty.runs = dirty.outputs = dirty.artifacts = dirty.graph = false;
    renderCounters();
  }

  // Time-driven updates: elapsed times, glow fading, the rate, the retry countdown.
  setInterval(function () {
    var t = now();
    tickRate(t);
    renderConnDetail();
    var anyRunning = false;
    state.runs.forEach(function (r) { if (r.status === "running") anyRunning = true; });
    if (anyRunning) dirty.runs = true;
    dirty.graph = true; // hot edges cool down
    scheduleFrame();
  }, 500);

  // The graph's size comes from a ResizeObserver, so drawing never forces a layout.
  function measureGraph() {
    var svg = $("graph");
    graphView.width = Math.round(svg.clientWidth);
    graphView.height = Math.round(svg.clientHeight);
    dirty.graph = true;
    scheduleFrame();
  }
  if (window.ResizeObserver) new ResizeObserver(measureGraph).observe($("graph"));
  else window.addEventListener("resize", measureGraph);
  measureGraph();
  window.addEventListener("online", retryNow);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) retryNow(); });
  $("toggle").addEventListener("click", togglePause);
  $("endpoint").textContent = conn.url;

  // Read-only hooks for debugging and tests.
  window.flockwsDashboard = {
    url: conn.url,
    limits: LIMITS,
    stats: function () {
      return {
        state: conn.state, connects: conn.connects, attempt: conn.attempt, lastClose: conn.lastClose, closes: conn.closes.slice(),
        url: conn.lastUrl, epoch: resume.epoch, seq: resume.seq, missed: resume.missed, protocol: resume.protocol,
        received: state.received, applied: state.applied, ignored: state.ignored, failed: state.failed,
        queued: queue.length, frames: frames, rate: rate.value, peakRate: rate.peak,
        runs: state.runs.size, artifacts: state.artifacts.length, artifactsTotal: state.artifactsTotal,
        maxRunText: Array.from(state.runs.values()).reduce(function (m, r) { return Math.max(m, r.text.length); }, 0),
      };
    },
  };

  render();
  connect();
})();
