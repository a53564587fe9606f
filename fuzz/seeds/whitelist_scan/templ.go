package main
var a = "flex items-center justify-between"
var b = `<div class="grid grid-cols-2 @container @sm:p-2">`
func f() string { return "hover:bg-blue-600/80 \"quoted\" " }
