// comment "not-a-class"
/* block 'w-4' */
export default function C({ tone }) {
  const cls = `text-${tone}-500 border rounded-lg shadow-[0_0_2px_rgba(0,0,0,.5)]`;
  switch (tone) { case "red": return "bg-red-500"; }
  return '<p class="sr-only focus:not-sr-only">\u002F x\x41 \n</p>' + "w-1/2 h-(--gutter) [mask-type:luminance]";
}
