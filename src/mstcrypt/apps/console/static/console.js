// mstcrypt console: the only script (served from this origin; the CSP allows no other).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // Login: `mstcrypt console open` passes the one-time code in the URL fragment, which
  // the browser never sends to a server. Take it, drop it from the address bar and
  // history, and submit the login form.
  var form = document.getElementById("login-form");
  if (form && location.hash.indexOf("#code=") === 0) {
    var code = decodeURIComponent(location.hash.slice(6));
    history.replaceState(null, "", location.pathname);
    document.getElementById("code").value = code;
    form.submit();
  }
  // Forms that change something irreversibly ask first.
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (e) {
      if (!window.confirm(f.getAttribute("data-confirm"))) { e.preventDefault(); }
    });
  });
  // Copy buttons.
  document.querySelectorAll("button[data-copy]").forEach(function (b) {
    b.addEventListener("click", function () {
      var el = document.getElementById(b.getAttribute("data-copy"));
      if (el && navigator.clipboard) { navigator.clipboard.writeText(el.textContent.trim()); }
    });
  });
});
