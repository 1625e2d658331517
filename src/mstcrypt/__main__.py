from mstcrypt.cli import main

main()
