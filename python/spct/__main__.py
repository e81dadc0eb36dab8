from spct.cli import main

main()
