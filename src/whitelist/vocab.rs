//! Word lists of the Tailwind shape test: Tailwind's variant names, bare utilities and utility roots, and
//! the CSS, SVG, CSP and HTTP names that must not pass for utilities; it must hold data only, no rules.

use std::sync::LazyLock;

use rustc_hash::FxHashSet;

/// A lazily built set of words.
pub(super) type Words = LazyLock<FxHashSet<&'static str>>;

fn words(list: &'static str) -> FxHashSet<&'static str> {
    list.split_whitespace().collect()
}

/// Variants that take no argument.
pub(super) static STATIC_VARIANTS: Words = LazyLock::new(|| {
    words(
        "hover focus focus-within focus-visible active visited target first last only odd even \
         first-of-type last-of-type only-of-type empty disabled enabled checked indeterminate default \
         optional required valid invalid user-valid user-invalid in-range out-of-range placeholder-shown \
         autofill read-only read-write open inert before after first-letter first-line marker selection \
         file backdrop placeholder details-content dark motion-safe motion-reduce contrast-more \
         contrast-less forced-colors not-forced-colors inverted-colors print portrait landscape noscript \
         rtl ltr starting pointer-fine pointer-coarse pointer-none any-pointer-fine any-pointer-coarse \
         any-pointer-none group peer popover-open target-current user-focus",
    )
});

/// Utilities that are a bare word or a fixed phrase (`flex`, `sr-only`), plus the `group`/`peer`/`dark` markers.
pub(super) static STATIC_UTILITIES: Words = LazyLock::new(|| {
    words(
        "block inline inline-block flex inline-flex grid inline-grid table inline-table table-caption \
         table-cell table-column table-column-group table-footer-group table-header-group table-row-group \
         table-row flow-root contents list-item hidden container static fixed absolute relative sticky \
         visible invisible collapse isolate sr-only not-sr-only truncate italic not-italic underline \
         overline line-through no-underline uppercase lowercase capitalize normal-case antialiased \
         subpixel-antialiased ordinal slashed-zero lining-nums oldstyle-nums proportional-nums \
         tabular-nums normal-nums diagonal-fractions stacked-fractions border rounded shadow ring \
         inset-ring inset-shadow outline blur drop-shadow grayscale invert sepia filter backdrop-filter \
         backdrop-blur backdrop-grayscale backdrop-invert backdrop-sepia transform transform-gpu \
         transform-cpu transform-none transition grow shrink flex-grow flex-shrink flex-wrap resize \
         border-collapse border-separate divide-x divide-y space-x-reverse space-y-reverse \
         divide-x-reverse divide-y-reverse box-border box-content mask-repeat text-wrap break-words \
         break-all scale-3d rotate-none translate-none scale-none bg-fixed group peer dark",
    )
});

/// Kebab words that start like a utility root but are CSS values or DOM words, never utilities.
pub(super) static NOT_UTILITIES: Words = LazyLock::new(|| {
    words(
        "border-box content-box padding-box fill-box stroke-box view-box margin-box space-between \
         space-around space-evenly flex-start flex-end self-end-start pre-wrap pre-line break-word \
         break-spaces keep-all text-top text-bottom no-repeat repeat-x repeat-y max-content min-content \
         fit-content sans-serif small-caps inline-size block-size inline-start inline-end block-start \
         block-end scroll-position top-layer top-level start-tag end-tag end-of-stream right-to-left \
         left-to-right text-plain text-html font-face font-feature-values content-visibility table-layout \
         col-resize row-resize all-scroll scale-down from-cache to-string from-image content-box \
         inline-start text-top auto-fill auto-fit auto-flow align-none start-with end-with size-adjust \
         underline-position block-end row-reverse column-reverse wrap-reverse translate-x translate-y \
         translate-z scale-x scale-y scale-z rotate-x rotate-y rotate-z skew-x skew-y",
    )
});

/// SVG attribute and element names and Content-Security-Policy directives.
pub(super) static SVG_AND_CSP: Words = LazyLock::new(|| {
    words(
        "accent-height arabic-form cap-height color-profile color-rendering enable-background font-face \
         font-face-format font-face-name font-face-src font-face-uri glyph-name \
         glyph-orientation-horizontal horiz-adv-x horiz-origin-x horiz-origin-y missing-glyph \
         overline-position overline-thickness panose-1 rendering-intent strikethrough-position \
         strikethrough-thickness underline-position underline-thickness unicode-range units-per-em \
         v-alphabetic v-hanging v-ideographic v-mathematical vert-adv-y vert-origin-x vert-origin-y \
         x-height font-size-adjust text-decoration-skip baseline-shift default-src script-src \
         script-src-elem script-src-attr style-src style-src-elem style-src-attr img-src font-src \
         connect-src media-src object-src frame-src child-src worker-src manifest-src prefetch-src \
         base-uri form-action frame-ancestors report-uri report-to require-trusted-types-for \
         trusted-types block-all-mixed-content fill-box stroke-box view-box",
    )
});

/// Roots of functional utilities: a root, a dash, then a value (`bg-red-500`, `max-w-[37px]`, `inset-x-0`).
pub(super) static ROOTS: Words = LazyLock::new(|| {
    words(
        "aspect columns break-after break-before break-inside box-decoration box float clear object \
         overflow overflow-x overflow-y overscroll overscroll-x overscroll-y inset inset-x inset-y \
         inset-s inset-e inset-bs inset-be start end top right bottom left z isolation visibility display \
         basis flex grow shrink flex-grow flex-shrink order grid-cols grid-rows grid-flow col col-span \
         col-start col-end row row-span row-start row-end auto-cols auto-rows gap gap-x gap-y justify \
         justify-items justify-self content items self place-content place-items place-self align p px py \
         ps pe pt pr pb pl pbs pbe m mx my ms me mt mr mb ml mbs mbe space-x space-y w min-w max-w h \
         min-h max-h size inline min-inline max-inline block min-block max-block font font-stretch \
         font-features text tracking leading line-clamp list list-image decoration underline-offset \
         underline indent whitespace break wrap hyphens placeholder text-shadow text-opacity tab bg \
         bg-linear bg-radial bg-conic bg-gradient bg-opacity bg-clip bg-origin bg-blend from via to \
         rounded border border-spacing border-opacity divide divide-opacity outline outline-offset ring \
         ring-offset ring-opacity inset-ring shadow inset-shadow drop-shadow opacity mix-blend mask blur \
         brightness contrast grayscale hue-rotate invert saturate sepia backdrop filter table caption \
         transition duration ease delay animate backface perspective perspective-origin rotate rotate-x \
         rotate-y rotate-z scale scale-x scale-y scale-z skew skew-x skew-y transform origin translate \
         translate-x translate-y translate-z accent appearance caret scheme cursor field-sizing \
         pointer-events resize scroll snap touch select will-change fill stroke forced-color-adjust \
         scrollbar contain zoom color-scheme container columns",
    )
});

/// Roots whose values are numbers (see [`is_numeric_value`]).
pub(super) static NUMERIC_ROOTS: Words = LazyLock::new(|| {
    words(
        "top right bottom left inset inset-x inset-y inset-s inset-e inset-bs inset-be start end p px py \
         ps pe pt pr pb pl pbs pbe m mx my ms me mt mr mb ml mbs mbe gap gap-x gap-y space-x space-y z \
         translate-x translate-y translate-z",
    )
});

/// CSS property and SVG presentation-attribute names (used to reject look-alikes such as `font-size`, and to
/// accept arbitrary properties such as `[mask-type:luminance]`).
pub(super) static CSS_PROPERTIES: Words = LazyLock::new(|| {
    words(
        "accent-color align-content align-items align-self alignment-baseline all anchor-name animation \
         animation-composition animation-delay animation-direction animation-duration animation-fill-mode \
         animation-iteration-count animation-name animation-play-state animation-timeline \
         animation-timing-function appearance aspect-ratio backdrop-filter backface-visibility background \
         background-attachment background-blend-mode background-clip background-color background-image \
         background-origin background-position background-position-x background-position-y \
         background-repeat background-size baseline-shift block-size border border-block \
         border-block-color border-block-end border-block-end-color border-block-end-style \
         border-block-end-width border-block-start border-block-start-color border-block-start-style \
         border-block-start-width border-block-style border-block-width border-bottom border-bottom-color \
         border-bottom-left-radius border-bottom-right-radius border-bottom-style border-bottom-width \
         border-collapse border-color border-end-end-radius border-end-start-radius border-image \
         border-image-outset border-image-repeat border-image-slice border-image-source \
         border-image-width border-inline border-inline-color border-inline-end border-inline-end-color \
         border-inline-end-style border-inline-end-width border-inline-start border-inline-start-color \
         border-inline-start-style border-inline-start-width border-inline-style border-inline-width \
         border-left border-left-color border-left-style border-left-width border-radius border-right \
         border-right-color border-right-style border-right-width border-spacing border-start-end-radius \
         border-start-start-radius border-style border-top border-top-color border-top-left-radius \
         border-top-right-radius border-top-style border-top-width border-width bottom \
         box-decoration-break box-shadow box-sizing break-after break-before break-inside caption-side \
         caret-color clear clip clip-path clip-rule color color-interpolation color-interpolation-filters \
         color-scheme column-count column-fill column-gap column-rule column-rule-color column-rule-style \
         column-rule-width column-span column-width columns contain contain-intrinsic-size container \
         container-name container-type content content-visibility counter-increment counter-reset \
         counter-set cursor cx cy d direction display dominant-baseline empty-cells field-sizing fill \
         fill-opacity fill-rule filter flex flex-basis flex-direction flex-flow flex-grow flex-shrink \
         flex-wrap float flood-color flood-opacity font font-family font-feature-settings font-kerning \
         font-language-override font-optical-sizing font-palette font-size font-size-adjust font-stretch \
         font-style font-synthesis font-variant font-variant-alternates font-variant-caps \
         font-variant-east-asian font-variant-ligatures font-variant-numeric font-variant-position \
         font-variation-settings font-weight forced-color-adjust gap glyph-orientation-vertical grid \
         grid-area grid-auto-columns grid-auto-flow grid-auto-rows grid-column grid-column-end \
         grid-column-gap grid-column-start grid-gap grid-row grid-row-end grid-row-gap grid-row-start \
         grid-template grid-template-areas grid-template-columns grid-template-rows hanging-punctuation \
         height hyphenate-character hyphens image-orientation image-rendering inline-size inset \
         inset-block inset-block-end inset-block-start inset-inline inset-inline-end inset-inline-start \
         isolation justify-content justify-items justify-self left letter-spacing lighting-color \
         line-break line-clamp line-height list-style list-style-image list-style-position \
         list-style-type margin margin-block margin-block-end margin-block-start margin-bottom \
         margin-inline margin-inline-end margin-inline-start margin-left margin-right margin-top marker \
         marker-end marker-mid marker-start mask mask-border mask-clip mask-composite mask-image \
         mask-mode mask-origin mask-position mask-size mask-type math-depth math-style max-block-size \
         max-height max-inline-size max-width min-block-size min-height min-inline-size min-width \
         mix-blend-mode object-fit object-position offset offset-anchor offset-distance offset-path \
         offset-position offset-rotate opacity order orphans outline outline-color outline-offset \
         outline-style outline-width overflow overflow-anchor overflow-block overflow-clip-margin \
         overflow-inline overflow-wrap overflow-x overflow-y overscroll-behavior \
         overscroll-behavior-block overscroll-behavior-inline overscroll-behavior-x overscroll-behavior-y \
         padding padding-block padding-block-end padding-block-start padding-bottom padding-inline \
         padding-inline-end padding-inline-start padding-left padding-right padding-top page \
         page-break-after page-break-before page-break-inside paint-order perspective perspective-origin \
         place-content place-items place-self pointer-events position print-color-adjust quotes r resize \
         right rotate row-gap ruby-align ruby-position rx ry scale scroll-behavior scroll-margin \
         scroll-margin-block scroll-margin-block-end scroll-margin-block-start scroll-margin-bottom \
         scroll-margin-inline scroll-margin-inline-end scroll-margin-inline-start scroll-margin-left \
         scroll-margin-right scroll-margin-top scroll-padding scroll-padding-block \
         scroll-padding-block-end scroll-padding-block-start scroll-padding-bottom scroll-padding-inline \
         scroll-padding-inline-end scroll-padding-inline-start scroll-padding-left scroll-padding-right \
         scroll-padding-top scroll-snap-align scroll-snap-stop scroll-snap-type scroll-timeline \
         scrollbar-color scrollbar-gutter scrollbar-width shape-image-threshold shape-margin \
         shape-outside shape-rendering stop-color stop-opacity stroke stroke-dasharray stroke-dashoffset \
         stroke-linecap stroke-linejoin stroke-miterlimit stroke-opacity stroke-width tab-size \
         table-layout text-align text-align-last text-anchor text-combine-upright text-decoration \
         text-decoration-color text-decoration-line text-decoration-skip-ink text-decoration-style \
         text-decoration-thickness text-emphasis text-emphasis-color text-emphasis-position \
         text-emphasis-style text-indent text-justify text-orientation text-overflow text-rendering \
         text-shadow text-transform text-underline-offset text-underline-position text-wrap \
         text-wrap-mode text-wrap-style top touch-action transform transform-box transform-origin \
         transform-style transition transition-behavior transition-delay transition-duration \
         transition-property transition-timing-function translate unicode-bidi user-select vector-effect \
         vertical-align view-transition-name visibility white-space white-space-collapse widows width \
         will-change word-break word-spacing word-wrap writing-mode x y z-index zoom",
    )
});

/// HTTP header names whose first word is also a utility root (`content-type`, `origin-agent-cluster`, ...).
pub(super) static HTTP_HEADERS: Words = LazyLock::new(|| {
    words(
        "content-type content-length content-encoding content-disposition content-language \
         content-location content-range content-security-policy content-security-policy-report-only \
         content-digest origin-agent-cluster accept-ranges accept-encoding accept-language accept-charset \
         accept-patch accept-post cache-control transfer-encoding last-modified if-none-match \
         if-modified-since if-match if-range if-unmodified-since set-cookie keep-alive max-forwards from \
         range server-timing timing-allow-origin retry-after referrer-policy cross-origin-opener-policy \
         cross-origin-embedder-policy cross-origin-resource-policy upgrade-insecure-requests \
         strict-transport-security",
    )
});
