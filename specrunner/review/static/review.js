// The review page: a grid of a run's result images, filters, a large view, keyboard review.
// Plain JavaScript, no library, no network beyond this server. The server is the only
// writer of the review file: each decision goes out alone, with the entry this page
// believes is there ("expect"), so two tabs never overwrite each other silently.
(function () {
  'use strict';

  var POLL_MS = 2000;
  var VERDICTS = ['approved', 'rejected', 'pending', 'stale'];
  var VERDICT_LABEL = {approved: 'approved', rejected: 'rejected', pending: 'not reviewed',
                       stale: 'stale', missing: 'file missing', none: 'no image'};
  var S = {
    doc: null, etag: null, tiles: [], shown: [], sel: null, open: false, mask: false,
    filters: {axes: {}, status: {}, verdict: {}}, undo: [], details: {},
    chain: Promise.resolve()  // decisions run one after another, in the order keys were hit
  };
  var $ = function (id) { return document.getElementById(id); };

  function esc(s) {
    return String(s === null || s === undefined ? '' : s).replace(/[&<>"']/g, function (c) {
      return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c];
    });
  }
  function keyOf(t) { return t.v + ':' + (t.i === null ? '' : t.i); }
  function q(params) {
    return Object.keys(params).map(function (k) {
      return encodeURIComponent(k) + '=' + encodeURIComponent(params[k]);
    }).join('&');
  }
  function thumbUrl(t) { return '/media/result?' + q({v: t.v, i: t.i, size: 'thumb', sha: t.sha}); }
  function fullUrl(t) { return '/media/result?' + q({v: t.v, i: t.i, size: 'full', sha: t.sha}); }
  function inputUrl(t, f) { return '/media/input?' + q({v: t.v, f: f, size: 'full'}); }
  function stateOf(t) {  // what the tile shows, from its decision entry and its bytes
    if (t.i === null) return 'none';
    if (!t.sha) return 'missing';
    if (!t.d) return 'pending';
    return t.d.sha256 === t.sha ? t.d.verdict : 'stale';
  }

  var toastTimer = null;
  function toast(text) {
    var el = $('toast');
    el.textContent = text;
    el.className = 'on';
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { el.className = ''; }, 4000);
  }

  // -- loading ----------------------------------------------------------------------------
  function load(force) {
    var headers = {};
    if (S.etag && !force) headers['If-None-Match'] = S.etag;
    return fetch('/api/state', {headers: headers, cache: 'no-store'}).then(function (r) {
      if (r.status === 304) return null;
      return r.json().then(function (doc) {
        if (!r.ok) throw new Error(doc.error || ('HTTP ' + r.status));
        S.etag = r.headers.get('ETag');
        apply(doc);
        return doc;
      });
    }).catch(function (err) { toast('cannot refresh: ' + err.message); });
  }

  function apply(doc) {
    var first = S.doc === null;
    S.doc = doc;
    S.tiles = doc.tiles;
    S.tiles.forEach(function (t) { t.state = stateOf(t); });
    if (first) readHash();
    document.title = 'review: ' + (doc.run.name || doc.run.dir);
    $('title').textContent = 'review: ' + (doc.run.name || doc.run.dir);
    var where = 'run ' + doc.run.dir + ' (' + (doc.run.status || 'no run yet') + ')';
    where += doc.run.status === 'running' ? ', refreshing while it runs' : '';
    where += ' \u00b7 decisions: ' + doc.run.review_file +
      (doc.run.review_exists ? '' : ' (written at the first decision)');
    if (doc.run.orphans) where += ' \u00b7 ' + doc.run.orphans + ' decision(s) for images this run does not have';
    doc.run.notes.forEach(function (n) { where += ' \u00b7 note: ' + n; });
    $('where').textContent = where;
    renderFilters();
    render();
    if (first && S.openOnLoad) { S.open = true; }
    if (S.open) showViewer();
  }

  // -- filters ----------------------------------------------------------------------------
  function groups() {
    var doc = S.doc, out = [];
    doc.axes.forEach(function (a, ai) {
      out.push({g: 'axes', name: a, values: doc.values[a], get: function (t) { return t.axes[ai]; }});
    });
    var statuses = [];
    S.tiles.forEach(function (t) { if (statuses.indexOf(t.status) < 0) statuses.push(t.status); });
    out.push({g: 'status', name: 'status', values: statuses, get: function (t) { return t.status; }});
    var verdicts = VERDICTS.slice();
    S.tiles.forEach(function (t) { if (verdicts.indexOf(t.state) < 0) verdicts.push(t.state); });
    out.push({g: 'verdict', name: 'verdict', values: verdicts, get: function (t) { return t.state; }});
    return out;
  }
  function chosen(gr) {
    var m = gr.g === 'axes' ? (S.filters.axes[gr.name] = S.filters.axes[gr.name] || {})
                            : S.filters[gr.g];
    return m;
  }
  function passes(t, grs) {
    for (var k = 0; k < grs.length; k++) {
      var on = chosen(grs[k]), any = false;
      for (var v in on) { if (on[v]) { any = true; break; } }
      if (any && !on[grs[k].get(t)]) return false;
    }
    return true;
  }
  function renderFilters() {
    var grs = groups(), html = '';
    grs.forEach(function (gr) {
      var counts = {};
      S.tiles.forEach(function (t) { var v = gr.get(t); counts[v] = (counts[v] || 0) + 1; });
      var on = chosen(gr);
      html += '<div class="fgroup" data-g="' + esc(gr.g) + '" data-name="' + esc(gr.name) + '">' +
        '<span class="fname">' + esc(gr.name) + '</span>';
      gr.values.forEach(function (v) {
        var label = gr.g === 'verdict' ? VERDICT_LABEL[v] || v : (gr.g === 'status' ? v.replace('_', ' ') : v);
        html += '<button type="button" class="chip" aria-pressed="' + (on[v] ? 'true' : 'false') +
          '" data-val="' + esc(v) + '">' + esc(label) + ' <span class="n">' + (counts[v] || 0) + '</span></button>';
      });
      html += '</div>';
    });
    $('filters').innerHTML = html;
  }
  $('filters').addEventListener('click', function (e) {
    var chip = e.target.closest('.chip');
    if (!chip) return;
    var box = chip.parentNode, g = box.getAttribute('data-g'), name = box.getAttribute('data-name');
    var on = g === 'axes' ? (S.filters.axes[name] = S.filters.axes[name] || {}) : S.filters[g];
    var v = chip.getAttribute('data-val');
    on[v] = !on[v];
    if (!on[v]) delete on[v];
    renderFilters();
    render();
    writeHash();
  });

  // -- grid -------------------------------------------------------------------------------
  function tileHtml(t, n) {
    var cls = 'tile st-' + t.status + ' vd-' + t.state + (keyOf(t) === S.sel ? ' sel' : '');
    var pic = t.i === null
      ? '<div class="pic none">' + esc(t.status.replace('_', ' ')) + (t.err ? ': ' + esc(t.err) : '') + '</div>'
      : (t.sha ? '<img class="pic" loading="lazy" alt="' + esc(t.v) + '" src="' + esc(thumbUrl(t)) + '">'
               : '<div class="pic none">file missing</div>');
    var label = t.i === null ? '' : (t.n > 1 ? ' #' + (t.i + 1) : '');
    var note = t.d && t.state !== 'stale' && t.d.note ? '<div class="note">' + esc(t.d.note) + '</div>' : '';
    var axes = S.doc.axes.map(function (a, ai) { return a + ': ' + t.axes[ai]; }).join(' \u00b7 ');
    return '<div class="' + cls + '" data-n="' + n + '" data-key="' + esc(keyOf(t)) + '" title="' + esc(axes) + '">' +
      pic + '<div class="cap"><span class="vid">' + esc(t.v) + esc(label) + '</span>' +
      '<span class="badge">' + esc(VERDICT_LABEL[t.state] || t.state) + '</span></div>' +
      '<div class="axes">' + esc(S.doc.axes.map(function (a, ai) { return t.axes[ai]; }).join(' \u00b7 ')) +
      '</div>' + note + '</div>';
  }
  function render() {
    var grs = groups();
    S.shown = S.tiles.filter(function (t) { return passes(t, grs); });
    $('grid').innerHTML = S.shown.map(tileHtml).join('');
    var c = {approved: 0, rejected: 0, pending: 0, stale: 0};
    S.tiles.forEach(function (t) { if (t.state in c) c[t.state]++; });
    $('counts').innerHTML = VERDICTS.map(function (v) {
      return '<span class="vd-' + v + '"><span class="badge vd-' + v + '">' + esc(VERDICT_LABEL[v]) + ' ' + c[v] + '</span></span>';
    }).join('');
    var filtered = S.shown.length !== S.tiles.length;
    $('showing').innerHTML = 'showing ' + S.shown.length + ' of ' + S.tiles.length +
      (filtered ? ' <button type="button" id="clear-filters">clear filters</button>' : '');
    if (S.sel !== null && !S.shown.some(function (t) { return keyOf(t) === S.sel; })) {
      S.sel = S.shown.length ? keyOf(S.shown[0]) : null;
      markSel();
    }
    if (S.sel === null && S.shown.length) { S.sel = keyOf(S.shown[0]); markSel(); }
  }
  $('showing').addEventListener('click', function (e) {
    if (e.target.id !== 'clear-filters') return;
    S.filters = {axes: {}, status: {}, verdict: {}};
    renderFilters(); render(); writeHash();
  });
  function selIndex() {
    for (var k = 0; k < S.shown.length; k++) if (keyOf(S.shown[k]) === S.sel) return k;
    return -1;
  }
  function current() { var k = selIndex(); return k < 0 ? null : S.shown[k]; }
  function markSel(scroll) {
    var old = document.querySelector('.tile.sel');
    if (old) old.classList.remove('sel');
    var k = selIndex();
    if (k < 0) return;
    var el = $('grid').children[k];
    if (el) {
      el.classList.add('sel');
      if (scroll) el.scrollIntoView({block: 'nearest'});
    }
  }
  function refreshTile(t) {
    t.state = stateOf(t);
    var k = S.shown.indexOf(t);
    if (k >= 0) {
      var box = document.createElement('div');
      box.innerHTML = tileHtml(t, k);
      $('grid').replaceChild(box.firstChild, $('grid').children[k]);
    }
    var c = {approved: 0, rejected: 0, pending: 0, stale: 0};
    S.tiles.forEach(function (x) { if (x.state in c) c[x.state]++; });
    $('counts').innerHTML = VERDICTS.map(function (v) {
      return '<span class="vd-' + v + '"><span class="badge vd-' + v + '">' + esc(VERDICT_LABEL[v]) + ' ' + c[v] + '</span></span>';
    }).join('');
    if (S.open && keyOf(t) === S.sel) showViewer();
  }
  function columns() {
    var kids = $('grid').children;
    if (kids.length < 2) return 1;
    var top = kids[0].offsetTop, n = 1;
    while (n < kids.length && kids[n].offsetTop === top) n++;
    return n;
  }
  function move(step) {
    if (!S.shown.length) return;
    var k = selIndex();
    var next = Math.max(0, Math.min(S.shown.length - 1, (k < 0 ? 0 : k + step)));
    S.sel = keyOf(S.shown[next]);
    markSel(true);
    if (S.open) showViewer();
    writeHash();
  }
  function nextReviewable() {  // after a decision: the next tile that has an image
    var k = selIndex();
    for (var j = k + 1; j < S.shown.length; j++) {
      if (S.shown[j].i !== null) { move(j - k); return; }
    }
  }
  $('grid').addEventListener('click', function (e) {
    var tile = e.target.closest('.tile');
    if (!tile) return;
    S.sel = tile.getAttribute('data-key');
    markSel();
    if (e.target.classList.contains('pic') || e.detail > 1) openViewer();
    writeHash();
  });

  // -- large view -------------------------------------------------------------------------
  function openViewer() {
    if (!current()) return;
    S.open = true;
    showViewer();
    writeHash();
  }
  function closeViewer() {
    S.open = false;
    $('viewer').hidden = true;
    markSel(true);
    writeHash();
  }
  function setImg(img, url) {
    if (url) { if (img.getAttribute('src') !== url) img.setAttribute('src', url); }
    else img.removeAttribute('src');
  }
  function showViewer() {
    var t = current();
    if (!t) { closeViewer(); return; }
    var v = $('viewer');
    v.hidden = false;
    v.classList.toggle('masked', S.mask);
    $('v-mask').checked = S.mask;
    $('v-title').textContent = t.v + (t.i !== null && t.n > 1 ? ' #' + (t.i + 1) : '');
    $('v-badge').textContent = VERDICT_LABEL[t.state] || t.state;
    $('v-badge').className = 'badge vd-' + t.state;
    setImg($('v-result'), t.i !== null && t.sha ? fullUrl(t) : null);
    $('v-result-cap').textContent = t.i === null ? 'no image: ' + t.status.replace('_', ' ') +
      (t.err ? ' (' + t.err + (t.msg ? ': ' + t.msg : '') + ')' : '') : 'result';
    var d = t.d, text;
    if (t.i === null) text = 'nothing to review: this task has no image';
    else if (!d) text = 'not reviewed yet';
    else if (t.state === 'stale') text = 'stale: ' + d.verdict + ' was decided on other bytes (sha256 ' +
      d.sha256.slice(0, 12) + '\u2026); this image is undecided';
    else text = d.verdict + (d.note ? ': \u201c' + d.note + '\u201d' : '');
    $('v-decision').textContent = text;
    details(t);
  }
  function details(t) {
    var have = S.details[t.v];
    if (have && have.etag === S.etag) { showDetails(t, have.doc); return; }
    fetch('/api/task?' + q({v: t.v}), {cache: 'no-store'}).then(function (r) { return r.json(); })
      .then(function (doc) {
        S.details[t.v] = {etag: S.etag, doc: doc};
        if (current() === t) showDetails(t, doc);
      }).catch(function (err) { toast('cannot load the task: ' + err.message); });
  }
  function showDetails(t, doc) {
    var files = {};
    doc.inputs.forEach(function (i) { files[i.field] = i; });
    var seed = files.seedImage, mask = files.maskImage;
    setImg($('v-seed'), seed && seed.kind === 'file' ? inputUrl(t, 'seed') : null);
    $('v-seed-cap').textContent = seed ? 'seed: ' + seed.value : 'seed: not known (the spec is unavailable)';
    var ov = mask && mask.kind === 'file' ? inputUrl(t, 'overlay') : null;
    ['v-seed-ov', 'v-result-ov'].forEach(function (id) {
      setImg($(id), ov);
      $(id).classList.toggle('ready', !!ov);
    });
    $('v-prompt-name').textContent = doc.prompt_name ? '(' + doc.prompt_name + ')' : '';
    $('v-prompt').textContent = doc.prompt || '(not recorded)';
    var img = null;
    doc.images.forEach(function (i) { if (i.i === t.i) img = i; });
    var rows = [['status', t.status.replace('_', ' ')]];
    doc.axes.forEach(function (a) { rows.push([a[0], a[1]]); });
    if (img) {
      rows.push(['generation seed', img.seed || '-'], ['cost', img.cost ? '$' + img.cost : '-'],
                ['file', img.path || '-'], ['sha256', t.sha || '-'], ['imageUUID', img.uuid || '-']);
    } else {
      rows.push(['estimated cost', '$' + doc.estimated_usd]);
    }
    if (mask) rows.push(['mask', mask.value + (mask.polarity !== 'white-edits' ? ' (' + mask.polarity + ')' : '')]);
    if (doc.error) rows.push(['error', doc.error.code + (doc.error.message ? ': ' + doc.error.message : '')]);
    $('v-info').innerHTML = rows.map(function (r) {
      return '<dt>' + esc(r[0]) + '</dt><dd>' + esc(r[1]) + '</dd>';
    }).join('');
    $('v-request').innerHTML = doc.request.map(function (r) {
      return '<tr><td>' + esc(r[0]) + '</td><td>' + esc(typeof r[1] === 'string' ? r[1] : JSON.stringify(r[1])) + '</td></tr>';
    }).join('');
  }
  $('v-prev').addEventListener('click', function () { move(-1); });
  $('v-next').addEventListener('click', function () { move(1); });
  $('v-close').addEventListener('click', closeViewer);
  $('v-mask').addEventListener('change', function () { toggleMask($('v-mask').checked); });
  function toggleMask(on) {
    S.mask = on === undefined ? !S.mask : on;
    $('viewer').classList.toggle('masked', S.mask);
    $('v-mask').checked = S.mask;
  }
  $('viewer').addEventListener('click', function (e) {
    var act = e.target.getAttribute && e.target.getAttribute('data-act');
    if (act) action(act);
  });

  // -- decisions --------------------------------------------------------------------------
  function send(t, entry, expect, restore) {
    return fetch('/api/decision', {
      method: 'POST', headers: {'Content-Type': 'application/json'}, cache: 'no-store',
      body: JSON.stringify({variant: t.v, index: t.i, entry: entry, expect: expect, restore: !!restore})
    }).then(function (r) {
      return r.json().then(function (doc) {
        if (r.ok) { t.d = doc.after; refreshTile(t); load(false); return true; }
        if (r.status === 409) {
          t.d = doc.current;
          refreshTile(t);
          toast(doc.error + ': now ' + (doc.current ? doc.current.verdict : 'undecided') +
                '. Press the key again to decide anyway.');
          load(true);
          return false;
        }
        toast('not saved: ' + (doc.error || 'HTTP ' + r.status));
        return false;
      });
    }).catch(function (err) { toast('not saved: ' + err.message); return false; });
  }
  function decide(verdict) {
    var t = current();
    if (!t) return null;
    if (t.i === null) { toast('this task has no image to review'); return null; }
    if (!t.sha) { toast('the image file is missing: nothing to review'); return null; }
    var before = t.d;
    var note = before && before.sha256 === t.sha ? before.note : null;
    var entry = verdict ? {sha256: t.sha, verdict: verdict, note: note} : null;
    if (!verdict && !before) { toast('no decision to clear'); return null; }
    return send(t, entry, before, false).then(function (ok) {
      if (!ok) return;
      S.undo.push({key: keyOf(t), before: before, after: t.d});
      if (verdict && $('advance').checked) nextReviewable();
    });
  }
  function undo() {
    var last = S.undo.pop();
    if (!last) { toast('nothing to undo on this page'); return null; }
    var t = null;
    S.tiles.forEach(function (x) { if (keyOf(x) === last.key) t = x; });
    if (!t) { toast('cannot undo: that image is no longer in the run'); return null; }
    return send(t, last.before, last.after, true).then(function (ok) {
      if (!ok) { toast('cannot undo: the decision changed since'); return; }
      S.sel = last.key;
      if (S.shown.indexOf(t) < 0) toast('undone (the image is hidden by the filters)');
      else markSel(true);
      if (S.open) showViewer();
    });
  }
  function note() {
    var t = current();
    if (!t || t.i === null) { toast('this task has no image to review'); return null; }
    if (!t.d || t.state === 'stale') { toast('approve (a) or reject (r) first, then add a note (n)'); return null; }
    var dlg = $('note-dialog');
    $('note-title').textContent = 'note on ' + t.v + ' (' + t.d.verdict + ')';
    $('note-text').value = t.d.note || '';
    dlg.returnValue = '';
    return new Promise(function (resolve) {
      dlg.onclose = function () {
        if (dlg.returnValue !== 'save') { resolve(false); return; }
        var before = t.d, text = $('note-text').value.trim();
        var entry = {sha256: before.sha256, verdict: before.verdict, note: text || null};
        send(t, entry, before, false).then(function (ok) {
          if (ok) S.undo.push({key: keyOf(t), before: before, after: t.d});
          resolve(ok);
        });
      };
      dlg.showModal();
      $('note-text').focus();
    });
  }
  $('note-text').addEventListener('keydown', function (e) {
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); $('note-dialog').close('save'); }
  });
  function action(act) {
    S.chain = S.chain.then(function () {
      if (act === 'approve') return decide('approved');
      if (act === 'reject') return decide('rejected');
      if (act === 'clear') return decide(null);
      if (act === 'undo') return undo();
      if (act === 'note') return note();
    }).catch(function (err) { toast('error: ' + err.message); });
  }

  // -- keyboard ---------------------------------------------------------------------------
  document.addEventListener('keydown', function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || $('note-dialog').open) return;
    var tag = (e.target.tagName || '').toLowerCase();
    if (tag === 'input' && e.target.type !== 'checkbox' || tag === 'textarea' || tag === 'select') return;
    var done = true;
    switch (e.key) {
      case 'ArrowRight': move(1); break;
      case 'ArrowLeft': move(-1); break;
      case 'ArrowDown': if (S.open) done = false; else move(columns()); break;
      case 'ArrowUp': if (S.open) done = false; else move(-columns()); break;
      case 'Enter': if (S.open) done = false; else openViewer(); break;
      case 'Escape':
        if (!$('help').hidden) $('help').hidden = true;
        else if (S.open) closeViewer();
        break;
      case 'a': action('approve'); break;
      case 'r': action('reject'); break;
      case 'c': action('clear'); break;
      case 'u': action('undo'); break;
      case 'n': action('note'); break;
      case 'm': toggleMask(); break;
      case '?': $('help').hidden = !$('help').hidden; break;
      default: done = false;
    }
    if (done) e.preventDefault();
  });
  $('help-btn').addEventListener('click', function () { $('help').hidden = !$('help').hidden; });
  $('help-close').addEventListener('click', function () { $('help').hidden = true; });

  // -- the address keeps filters and the open image, so a reload comes back to them ---------
  function writeHash() {
    var p = new URLSearchParams();
    Object.keys(S.filters.axes).forEach(function (a) {
      Object.keys(S.filters.axes[a]).forEach(function (v) { p.append('a.' + a, v); });
    });
    ['status', 'verdict'].forEach(function (g) {
      Object.keys(S.filters[g]).forEach(function (v) { p.append(g, v); });
    });
    if (S.sel !== null) p.set('sel', S.sel);
    if (S.open) p.set('open', '1');
    history.replaceState(null, '', '#' + p.toString());
  }
  function readHash() {
    var p = new URLSearchParams(location.hash.slice(1));
    p.forEach(function (v, k) {
      if (k.slice(0, 2) === 'a.') {
        var a = k.slice(2);
        (S.filters.axes[a] = S.filters.axes[a] || {})[v] = true;
      } else if (k === 'status' || k === 'verdict') S.filters[k][v] = true;
    });
    if (p.get('sel')) S.sel = p.get('sel');
    S.openOnLoad = p.get('open') === '1';
  }

  load(true).then(function () { markSel(true); });
  setInterval(function () { if (!document.hidden) load(false); }, POLL_MS);
  document.addEventListener('visibilitychange', function () { if (!document.hidden) load(false); });
})();
