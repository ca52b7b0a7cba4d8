// pymdownx.arithmatex (generic mode) wraps each formula in \( \) or \[ \] inside an
// element of class "arithmatex"; MathJax typesets those elements and nothing else.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
  },
  options: {
    ignoreHtmlClass: ".*",
    processHtmlClass: "arithmatex",
  },
};
