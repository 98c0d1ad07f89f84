// The annotator's page script, loaded in the page's <head>. It listens on the document, so it works whatever
// Gradio renders later. Three jobs:
// 1. One ordered stream of actions: every button, shortcut and canvas click is queued here and sent by the hidden
//    "apply" event, which Gradio runs "always_last" (one request in flight, the actions queued meanwhile sent
//    together after it). Each action is numbered in the order the user made it; the server applies them in that
//    order (AnnotationSession.turn), so nothing made quickly is dropped or reordered.
// 2. Canvas clicks in the overlay's pixels, under zoom (wheel, + / -, 0 to fit) and pan (drag).
// 3. Keyboard shortcuts.
(() => {
  if (window.dynamite) return;
  const MAX_ZOOM = 8;
  const queue = [];
  let sequence = 0;
  const view = { zoom: 1, x: 0, y: 0, width: 0, height: 0 };
  let press = null;
  let dragged = false;

  const dynamite = (window.dynamite = {
    view,
    push(action) {
      queue.push(action);
      document.getElementById("apply")?.click();
    },
    // Run by the apply event just before it sends: the queued actions, numbered.
    drain() {
      const batch = queue.splice(0);
      for (const action of batch) action.seq = ++sequence;
      return batch.length ? JSON.stringify(batch) : "";
    },
    // A number in the same sequence for the upload event (its files travel by Gradio's own upload).
    stamp() {
      return ++sequence;
    },
    zoomBy(factor, clientX, clientY) {
      const frame = canvasFrame();
      if (!frame) return;
      const rect = frame.getBoundingClientRect();
      const px = (clientX ?? rect.left + rect.width / 2) - rect.left;
      const py = (clientY ?? rect.top + rect.height / 2) - rect.top;
      const zoom = Math.min(MAX_ZOOM, Math.max(1, view.zoom * factor));
      // Keep the image point under (px, py) where it is.
      view.x = px - ((px - view.x) / view.zoom) * zoom;
      view.y = py - ((py - view.y) / view.zoom) * zoom;
      view.zoom = zoom;
      setView();
    },
    fit() {
      view.zoom = 1;
      view.x = view.y = 0;
      setView();
    },
  });

  function canvasImage(target) {
    return target?.closest?.("#canvas img") || null;
  }

  // The overlay's size in its own pixels; while a new overlay loads, the last one's (the same image's).
  function naturalSize(image) {
    return image.naturalWidth ? [image.naturalWidth, image.naturalHeight] : [view.width, view.height];
  }

  function canvasFrame() {
    const image = document.querySelector("#canvas img");
    return image ? image.parentElement : null;
  }

  function setView() {
    const frame = canvasFrame();
    if (frame) {
      const rect = frame.getBoundingClientRect();
      view.x = Math.min(0, Math.max(rect.width - rect.width * view.zoom, view.x));
      view.y = Math.min(0, Math.max(rect.height - rect.height * view.zoom, view.y));
    }
    const canvas = document.getElementById("canvas");
    if (!canvas) return;
    canvas.style.setProperty("--zoom", view.zoom);
    canvas.style.setProperty("--pan-x", `${view.x}px`);
    canvas.style.setProperty("--pan-y", `${view.y}px`);
  }

  // The point under the pointer in the overlay's pixels (continuous), zoom and pan included; null outside.
  function overlayPoint(image, clientX, clientY) {
    const [width, height] = naturalSize(image);
    const rect = image.getBoundingClientRect();
    if (!width || !rect.width) return null;
    const scale = Math.min(rect.width / width, rect.height / height);
    const x = (clientX - rect.left - (rect.width - width * scale) / 2) / scale;
    const y = (clientY - rect.top - (rect.height - height * scale) / 2) / scale;
    if (x < 0 || y < 0 || x >= width || y >= height) return null;
    return { x, y };
  }

  function imageKey() {
    return document.querySelector("#image-key textarea, #image-key input")?.value || "";
  }

  function backgroundBox() {
    return document.querySelector("#background input[type=checkbox]");
  }

  document.addEventListener(
    "pointerdown",
    (event) => {
      if (event.button !== 0 || !canvasImage(event.target)) return;
      press = { x: event.clientX, y: event.clientY, viewX: view.x, viewY: view.y, moved: false };
    },
    true,
  );
  document.addEventListener(
    "pointermove",
    (event) => {
      if (!press) return;
      const dx = event.clientX - press.x;
      const dy = event.clientY - press.y;
      if (!press.moved && Math.hypot(dx, dy) < 4) return;
      press.moved = true;
      view.x = press.viewX + dx;
      view.y = press.viewY + dy;
      setView();
    },
    true,
  );
  document.addEventListener(
    "pointerup",
    () => {
      dragged = Boolean(press?.moved);
      press = null;
    },
    true,
  );
  // Clicks on the overlay are the app's own: Gradio's image never sees them (its select event would lose the zoom).
  document.addEventListener(
    "click",
    (event) => {
      const image = canvasImage(event.target);
      if (!image) return;
      event.stopPropagation();
      event.preventDefault();
      if (dragged) {
        dragged = false;
        return;
      }
      const point = overlayPoint(image, event.clientX, event.clientY);
      if (!point) return;
      const background = Boolean(backgroundBox()?.checked);
      dynamite.push({ kind: "click", key: imageKey(), x: point.x, y: point.y, background });
    },
    true,
  );
  document.addEventListener(
    "dragstart",
    (event) => {
      if (canvasImage(event.target)) event.preventDefault();
    },
    true,
  );
  document.addEventListener(
    "wheel",
    (event) => {
      if (!canvasImage(event.target)) return;
      event.preventDefault();
      dynamite.zoomBy(Math.exp(-event.deltaY * 0.002), event.clientX, event.clientY);
    },
    { capture: true, passive: false },
  );
  // A new image (another size) starts fitted.
  document.addEventListener(
    "load",
    (event) => {
      const image = canvasImage(event.target);
      if (!image?.naturalWidth || (image.naturalWidth === view.width && image.naturalHeight === view.height)) return;
      view.width = image.naturalWidth;
      view.height = image.naturalHeight;
      dynamite.fit();
    },
    true,
  );

  function typing(target) {
    if (!target?.tagName) return false;
    if (target.isContentEditable || target.tagName === "TEXTAREA" || target.tagName === "SELECT") return true;
    return target.tagName === "INPUT" && !["checkbox", "radio", "button", "range", "file"].includes(target.type);
  }

  const ACTIONS = { n: "add_instance", z: "undo", delete: "remove_instance", arrowright: "next", arrowleft: "previous" };
  document.addEventListener("keydown", (event) => {
    if (typing(event.target) || event.altKey) return;
    const key = event.key.toLowerCase();
    if (event.ctrlKey || event.metaKey) {
      if (key === "z" && !event.shiftKey) {
        event.preventDefault();
        dynamite.push({ kind: "undo" });
      }
      return;
    }
    // Arrows keep their own meaning in a radio group or on a slider.
    if (key.startsWith("arrow") && ["radio", "range"].includes(event.target?.type)) return;
    if (key in ACTIONS) dynamite.push({ kind: ACTIONS[key] });
    else if (key === "b") backgroundBox()?.click();
    else if (key === "+" || key === "=") dynamite.zoomBy(1.5);
    else if (key === "-" || key === "_") dynamite.zoomBy(1 / 1.5);
    else if (key === "0") dynamite.fit();
    else return;
    event.preventDefault();
  });
})();
