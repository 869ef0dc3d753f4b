# cmake -DINPUT=FILE -DOUTPUT=FILE.c -DSYMBOL=name -P cmake/embed.cmake
# Writes a C file defining `const unsigned char SYMBOL[]` with FILE's bytes and
# `const unsigned long SYMBOL_len`: project data compiled into the binary, so that the
# installed program needs nothing beside it (data/README.md).
file(READ "${INPUT}" hex HEX)
string(LENGTH "${hex}" nhex)
math(EXPR nbytes "${nhex} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
# 16 bytes per line keeps the generated file readable in an editor.
string(REPEAT "0x[0-9a-f][0-9a-f]," 16 line)
string(REGEX REPLACE "(${line})" "\\1\n" bytes "${bytes}")
get_filename_component(name "${INPUT}" NAME)
file(WRITE "${OUTPUT}.tmp"
     "/* Generated from data/${name} by cmake/embed.cmake: do not edit. */\n"
     "const unsigned char ${SYMBOL}[] = {\n${bytes}\n};\n"
     "const unsigned long ${SYMBOL}_len = ${nbytes}UL;\n")
file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")
