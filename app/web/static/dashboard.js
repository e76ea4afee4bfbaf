// Batchery's dashboard: reads the JSON API (with the token the person gave, if the API asks for one)
// and redraws the page every POLL_MS. No library, nothing fetched from outside the API.
"use strict";
(function () {
  var POLL_MS = 1500;
  var PAGE_SIZE = 20;
  var TOKEN_KEY = "batchery-token";
  var needsToken = document.body.dataset.tokenRequired === "yes";

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      if (name === "text") node.textContent = attrs[name];
      else node.setAttribute(name, attrs[name]);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function replace(node, children) {
    while (node.firstChild) node.removeChild(node.firstChild);
    children.forEach(function (child) { node.appendChild(child); });
  }

  function api(method, path, body) {
    var headers = {Accept: "application/json"};
    var token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(path, {method: method, headers: headers, body: body === undefined ? undefined : JSON.stringify(body)})
      .then(function (response) {
        return response.json().then(function (data) {
          if (response.status === 401) { signIn("the token was refused: " + data.message); }
          if (!response.ok) { var err = new Error(data.message || response.statusText); err.status = response.status; throw err; }
          return data;
        });
      });
  }

  function signIn(why) {
    sessionStorage.removeItem(TOKEN_KEY);
    document.getElementById("content").hidden = true;
    document.getElementById("signin").hidden = false;
    document.getElementById("signin-error").textContent = why || "";
  }

  // The badge's class gives its colour and its border (solid, dashed, double): the text says the status anyway.
  var BADGES = {status_enqueuing: "running", status_running: "running", status_paused: "paused",
                status_succeeded: "succeeded", status_stopped: "stopped"};

  function badge(status) {
    return el("span", {"class": "badge " + (BADGES[status] || "failed"), text: status.replace("status_", "")});
  }

  function bar(progress) {
    var share = progress.total ? Math.min(100, 100 * progress.done / progress.total) : 0;
    return el("div", {"class": "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": String(progress.total),
                      "aria-valuenow": String(progress.done)}, [el("span", {style: "width:" + share.toFixed(1) + "%"})]);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    seconds = Math.round(seconds);
    var h = Math.floor(seconds / 3600), m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
  }

  function elapsed(job) {
    if (!job.start_time) return null;
    var end = job.end_time ? Date.parse(job.end_time) : Date.now();
    return (end - Date.parse(job.start_time)) / 1000;
  }

  function failedAttempts(job) { return (job.batch_metrics && job.batch_metrics.failed) || 0; }

  // ---- the dashboard: every API, its jobs paged
  var pages = {};

  function jobRow(name, job) {
    var p = job.progress;
    return el("tr", {"data-job": job.job_id}, [
      el("td", {}, [el("a", {href: "/jobs/" + encodeURIComponent(name) + "/" + encodeURIComponent(job.job_id), text: job.job_id})]),
      el("td", {}, [badge(job.status)]),
      el("td", {}, [bar(p), el("span", {"class": "count", text: p.done + " / " + p.total})]),
      el("td", {"class": "wide", text: String(p.batches_per_second)}),
      el("td", {text: p.eta_seconds === null ? "–" : duration(p.eta_seconds)}),
      el("td", {"class": "wide", text: String(failedAttempts(job))}),
      el("td", {"class": "wide", text: String(job.workers)}),
      el("td", {"class": "wide", text: job.start_time || "–"}),
      el("td", {"class": "wide", text: duration(elapsed(job))})
    ]);
  }

  function apiSection(name, answer) {
    var jobs = answer.batch_job_statuses, page = pages[name] || 0;
    var last = Math.max(0, Math.ceil(jobs.length / PAGE_SIZE) - 1);
    page = Math.min(page, last);
    var heads = ["Job", "Status", "Progress", "Batches/s", "ETA", "Failed attempts", "Workers", "Started", "Duration"];
    var wide = {"Batches/s": 1, "Failed attempts": 1, "Workers": 1, "Started": 1, "Duration": 1};
    var table = el("table", {}, [
      el("thead", {}, [el("tr", {}, heads.map(function (h) { return el("th", {text: h, "class": wide[h] ? "wide" : ""}); }))]),
      el("tbody", {}, jobs.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE).map(function (job) { return jobRow(name, job); }))
    ]);
    var nav = el("p", {}, [
      page > 0 ? el("button", {type: "button", "data-api": name, "data-step": "-1", text: "Newer"}) : null,
      el("span", {text: " page " + (page + 1) + " of " + (last + 1) + " "}),
      page < last ? el("button", {type: "button", "data-api": name, "data-step": "1", text: "Older"}) : null
    ]);
    return el("section", {id: "api-" + name, "class": "api"}, [el("h2", {text: name}), el("div", {"class": "scroll"}, [table]), nav]);
  }

  function refreshDashboard() {
    return api("GET", "/batch").then(function (listing) {
      return Promise.all(listing.apis.map(function (entry) { return api("GET", "/batch/" + encodeURIComponent(entry.name)); }))
        .then(function (answers) {
          var sections = answers.map(function (answer, i) {
            var entry = listing.apis[i];
            var section = apiSection(entry.name, answer);
            var latest = entry.latest_job ? entry.latest_job.job_id + " (" + entry.latest_job.status + ")" : "none";
            section.insertBefore(el("p", {text: entry.running_jobs + " running; latest job: " + latest}), section.children[1]);
            return section;
          });
          replace(document.getElementById("apis"), sections.length ? sections : [el("p", {text: "No API is deployed."})]);
        });
    });
  }

  document.addEventListener("click", function (event) {
    var step = event.target.getAttribute("data-step");
    if (step) {
      var name = event.target.getAttribute("data-api");
      pages[name] = Math.max(0, (pages[name] || 0) + Number(step));
      refreshDashboard();
    }
  });

  // ---- one job's page
  var root = document.getElementById("job");
  var logNext = 0;

  function definitions(node, pairs) {
    var children = [];
    pairs.forEach(function (pair) { children.push(el("dt", {text: pair[0]}), el("dd", {text: String(pair[1])})); });
    replace(node, children);
  }

  function jobPath(suffix) {
    return "/batch/" + encodeURIComponent(root.dataset.api) + "/" + encodeURIComponent(root.dataset.job) + suffix;
  }

  function drawChart(series) {
    var svg = document.getElementById("chart"), ns = "http://www.w3.org/2000/svg";
    var points = series.points, width = 600, height = 160, pad = 30;
    var top = Math.max.apply(null, points.map(function (p) { return p.batches_per_second; }).concat([0.001]));
    var first = points.length ? points[0].time : 0, span = points.length > 1 ? points[points.length - 1].time - first : 1;
    var coords = points.map(function (p) {
      var x = pad + (width - 2 * pad) * (p.time - first) / span, y = height - pad - (height - 2 * pad) * p.batches_per_second / top;
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var axis = document.createElementNS(ns, "path");
    axis.setAttribute("d", "M" + pad + " " + pad + " V" + (height - pad) + " H" + (width - pad));
    axis.setAttribute("stroke", "#666"); axis.setAttribute("fill", "none");
    svg.appendChild(axis);
    var line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", coords.join(" ")); line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#111"); line.setAttribute("stroke-width", "2"); line.setAttribute("class", "series");
    svg.appendChild(line);
    coords.forEach(function (xy) {  // a dot per point: a job of one bucket is still drawn
      var dot = document.createElementNS(ns, "circle"), at = xy.split(",");
      dot.setAttribute("cx", at[0]); dot.setAttribute("cy", at[1]); dot.setAttribute("r", "3");
      svg.appendChild(dot);
    });
    var label = document.createElementNS(ns, "text");
    label.setAttribute("x", "2"); label.setAttribute("y", "20"); label.setAttribute("font-size", "12"); label.textContent = top.toFixed(2) + "/s";
    svg.appendChild(label);
    document.getElementById("chart-caption").textContent = points.length + " points of " + series.bucket_seconds +
      " s; peak " + top.toFixed(2) + " batches per second";
  }

  function showJob(answer) {
    var job = answer.job_status, p = job.progress;
    var status = document.getElementById("status");
    status.className = badge(job.status).className; status.textContent = job.status.replace("status_", "");
    document.getElementById("message").textContent = job.message || "";
    replace(document.getElementById("progress"), [bar(p), el("p", {"class": "count", text: p.done + " / " + p.total +
      " batches, " + p.batches_per_second + " per second, ETA " + (p.eta_seconds === null ? "–" : duration(p.eta_seconds))})]);
    var m = job.batch_metrics || {};
    definitions(document.getElementById("metrics"), [["Succeeded", m.succeeded], ["Failed attempts", m.failed],
      ["Average time per batch", m.avg_time_per_batch == null ? "–" : m.avg_time_per_batch.toFixed(3) + " s"],
      ["In queue", job.batches_in_queue], ["Started", job.start_time || "–"], ["Duration", duration(elapsed(job))]]);
    var w = job.worker_counts || {};
    definitions(document.getElementById("workers"), [["Workers (cap)", job.workers], ["Running", w.running || 0],
      ["Initializing", w.initializing || 0], ["Pending", w.pending || 0], ["Stalled", w.stalled || 0]]);
    var related = [];
    if (job.parent_job_id) related.push(["retry of", job.parent_job_id]);
    (job.retry_job_ids || []).forEach(function (id) { related.push(["retried as", id]); });
    replace(document.getElementById("related"), related.length ? related.map(function (r) {
      return el("li", {}, [el("span", {text: r[0] + " "}), el("a", {href: "/jobs/" + encodeURIComponent(root.dataset.api) + "/" + encodeURIComponent(r[1]), text: r[1]})]);
    }) : [el("li", {text: "none"})]);
    var spec = document.getElementById("spec"), text = JSON.stringify(answer.api_spec ? {job: job, api: answer.api_spec} : job, null, 2);
    if (spec.textContent !== text) spec.textContent = text;
  }

  function showDeadLetters(answer) {
    document.getElementById("dead-count").textContent = answer.total + " batches failed for good" +
      (answer.more ? " (" + answer.more + " more not listed)" : "");
    replace(document.getElementById("dead"), answer.dead_letters.map(function (d) {
      return el("tr", {}, [el("td", {text: d.batch_id}), el("td", {text: d.attempts === null ? "–" : String(d.attempts)}),
        el("td", {text: d.error || "–"})]);
    }));
  }

  function followLog() {
    return api("GET", "/batch/" + encodeURIComponent(root.dataset.api) + "/logs?jobID=" + encodeURIComponent(root.dataset.job) +
               "&after=" + logNext).then(function (answer) {
      var log = document.getElementById("log");
      answer.lines.forEach(function (line) {
        log.appendChild(document.createTextNode(new Date(line.time * 1000).toISOString() + " " + line.level + " " + line.message + "\n"));
      });
      logNext = answer.next;
    });
  }

  function refreshJob() {
    return Promise.all([
      api("GET", "/batch/" + encodeURIComponent(root.dataset.api) + "?jobID=" + encodeURIComponent(root.dataset.job)).then(showJob),
      api("GET", jobPath("/throughput")).then(drawChart),
      api("GET", jobPath("/dead_letters")).then(showDeadLetters),
      followLog()
    ]);
  }

  var ACTIONS = {
    stop: function () { return api("DELETE", "/batch/" + encodeURIComponent(root.dataset.api) + "?jobID=" + encodeURIComponent(root.dataset.job)); },
    pause: function () { return api("POST", jobPath("/pause"), {}); },
    resume: function () { return api("POST", jobPath("/resume"), {}); },
    retry: function () { return api("POST", jobPath("/retry"), {}); }
  };

  function act(name) {
    if (!window.confirm(name + " job " + root.dataset.job + "?")) return;
    var result = document.getElementById("action-result");
    ACTIONS[name]().then(function (answer) {
      result.textContent = name + ": done" + (name === "retry" ? " (new job " + answer.job_id + ")" : "");
      return refreshJob();
    }, function (err) { result.textContent = name + ": " + err.message; });
  }

  // ---- start: the sign-in form when a token is needed and not given, else the page, refreshed
  var refresh = root ? refreshJob : refreshDashboard;
  var timer = null;

  function tick() {
    refresh().then(function () { document.getElementById("live").textContent = "updated " + new Date().toLocaleTimeString(); },
      function (err) { if (err.status !== 401) document.getElementById("live").textContent = "update failed: " + err.message; })
      .then(function () { timer = setTimeout(tick, POLL_MS); });
  }

  function start() {
    document.getElementById("signin").hidden = true;
    document.getElementById("content").hidden = false;
    if (timer === null) tick();
  }

  if (root) {
    Array.prototype.forEach.call(document.querySelectorAll("[data-action]"), function (button) {
      button.addEventListener("click", function () { act(button.getAttribute("data-action")); });
    });
  }
  document.getElementById("signin").addEventListener("submit", function (event) {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
    timer = null;
    start();
  });
  if (needsToken && !sessionStorage.getItem(TOKEN_KEY)) signIn(""); else start();
})();
